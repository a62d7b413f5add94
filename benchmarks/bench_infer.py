"""Images/s of batch inference end to end from the PNG cache: our pipelined ONNX Runtime path vs PyTorch eager.

Both paths read the same N model-size PNGs from disk, run the same `model.preprocess.preprocess`, and
push the batches through the same ResNet18 (random weights, 2 sigmoid outputs), read as the product reads it
(`train.flip_reading`: each image and its three flips, one batched pass). Each path runs in its
own process so the peak RSS printed is that path's alone. Optional int8 (QDQ, quantize_static) path.
Then the network alone ("network alone" lines): the same batches preprocessed before the clock starts, pushed
through PyTorch eager and through the ONNX Runtime session inference opens; decoding and preprocessing cost
both end-to-end paths the same few CPU ms per image, so this is the ratio of the engines themselves.
On a shared machine wall-clock images/s depends on the neighbours, so each path also prints its CPU time
per image and the rate that implies with every core to itself ("cpu-bound").

    .venv/bin/python benchmarks/bench_infer.py            # N=1000 at the trainer's from-scratch size
    .venv/bin/python benchmarks/bench_infer.py -n 2000 --size 192 --int8
    .venv/bin/python benchmarks/bench_infer.py -n 1000 --int8 --second-look

With --second-look every image also gets a 1024-px display PNG and the model a (random) second look
(model/second_look_model.py), so the ONNX path also runs the patch network on each display PNG's candidates, as
inference does for a model that has one: the figure to hold against the issue's >= 67 images/s. Measured twice:
with the candidates `image_cache` keeps beside each display PNG (model/candidate_store.py; the product's path),
and cold, with every kept candidate deleted after the warm-up, so inference decodes each display PNG and cuts its
candidates (a cache made before this SECOND_LOOK_VERSION).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mammo_pipeline.model.export import export_module
from mammo_pipeline.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.model.train import SCRATCH, flip_reading
from mammo_pipeline.settings import Settings


def make_pngs(settings: Settings, n: int) -> pd.DataFrame:
    """N portrait 256-px grayscale PNGs that look roughly like a breast on black (smooth + noise)."""
    rng = np.random.default_rng(0)
    h, w = 256, 208
    yy, xx = np.mgrid[0:h, 0:w]
    rows = []
    for i in range(n):
        cx, cy, r = rng.uniform(-40, 20), rng.uniform(100, 160), rng.uniform(150, 220)
        tissue = np.clip(1 - np.hypot(xx - cx, yy - cy) / r, 0, 1) ** 0.5
        img = np.clip(tissue * 200 + rng.normal(0, 12, (h, w)) * (tissue > 0), 0, 255).astype(np.uint8)
        rel = Path("bench") / f"{i:06d}.png"
        (settings.cache / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(settings.cache / rel)
        rows.append(
            {
                "sop_instance_uid": f"1.2.{i}",
                "study_instance_uid": f"1.2.s{i // 4}",
                "patient_key": f"p{i // 8}",
                "hospital": "bench",
                "model_png": str(rel),
            }
        )
    return pd.DataFrame(rows)


def make_display_pngs(settings: Settings, manifest: pd.DataFrame, size: int = 1024) -> pd.DataFrame:
    """A display PNG (long side `size`) per model PNG: the same image upsampled, with a few small bright blobs,
    and its candidates kept beside it, as `image_cache` writes them."""
    from mammo_pipeline.model import candidate_store

    rng = np.random.default_rng(1)
    rels = []
    for rel in manifest["model_png"]:
        with Image.open(settings.cache / rel) as img:
            big = np.asarray(img.resize((round(img.width * size / img.height), size), Image.Resampling.BILINEAR))
        big = big.copy()
        for _ in range(3):
            y, x = rng.integers(100, size - 100), rng.integers(20, big.shape[1] - 20)
            big[y - 4 : y + 5, x - 2 : x + 3] = 255
        out = Path("bench") / "display" / Path(rel).name
        (settings.cache / out).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(big).save(settings.cache / out)
        candidate_store.keep(candidate_store.cut(big), settings.cache / out)  # as image_cache does
        rels.append(str(out))
    return manifest.assign(display_png=rels)


def add_second_look(settings: Settings, ref: ModelRef) -> ModelRef:
    """`ref` with a random second look exported next to it (what a trained model carries)."""
    import torch

    from mammo_pipeline.model import second_look_model as look
    from mammo_pipeline.model.second_look import patch_network

    torch.manual_seed(0)
    example = look.candidates_of([np.zeros((64, 64), np.uint8)] * 2).crops
    path = ref.path(settings.models, look.ONNX_FILE)
    sha = look.export(patch_network().eval(), path, example, {"model_version": ref.model_version})
    info = {**look.describe(settings.display_size), "onnx_file": path.name, "onnx_sha256": sha}
    return ref.with_(extra={**ref.extra, "second_look": info})


def make_torch_model():
    import torch
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=2)
    return torch.nn.Sequential(flip_reading(net), torch.nn.Sigmoid()).eval()  # as the product reads: 4 flips


def export_model(settings: Settings, size: int) -> ModelRef:
    """ResNet18 -> models/bench/model.onnx with the contract's names and metadata_props."""
    import torch

    folder = settings.models / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    torch.manual_seed(0)
    export_module(make_torch_model(), path, ModelRef("bench", "none", "bench", size, IMAGENET_MEAN, IMAGENET_STD))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return ModelRef("bench", "none", "bench", size, IMAGENET_MEAN, IMAGENET_STD, onnx_file="model.onnx",
                    onnx_sha256=sha, inference_file="model.onnx", inference_sha256=sha)  # fmt: skip


def quantize(settings: Settings, ref: ModelRef, manifest: pd.DataFrame) -> ModelRef:
    """int8 QDQ model calibrated on 64 of the images (what export.py's int8 path would produce)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            paths = [settings.cache / p for p in manifest["model_png"].iloc[:64]]
            self.batches = iter({"image": preprocess(p, ref.input_size)[None]} for p in paths)

        def get_next(self):
            return next(self.batches, None)

    src, pre, dst = (ref.path(settings.models, n) for n in ("model.onnx", "model.pre.onnx", "model.int8.onnx"))
    quant_pre_process(str(src), str(pre))
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    sha = hashlib.sha256(dst.read_bytes()).hexdigest()
    return ref.with_(inference_file="model.int8.onnx", inference_sha256=sha)


class Timer:
    """Wall clock and this process's CPU time (all threads) over a block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def figures(self, n: int) -> tuple[float, float]:
        """(images/s, CPU ms per image)."""
        return n / self.wall, 1000 * self.cpu / n


def run_onnx(
    settings: Settings, ref: ModelRef, manifest: pd.DataFrame, batch_size: int, cold: bool = False
) -> tuple[float, float]:
    """Images/s and CPU ms per image of `write_predictions`; `cold`: kept candidates deleted after the warm-up."""
    import shutil

    from mammo_pipeline.model.infer import load_model, write_predictions

    model = load_model(settings, ref)
    out = settings.home / f"out-{ref.inference_file}.parquet"
    write_predictions(settings, manifest.iloc[:batch_size], model, out, batch_size=batch_size)  # warm-up
    for kept in settings.cache.glob("bench/display/candidates-v*") if cold else []:
        shutil.rmtree(kept)
    out.unlink()  # else write_predictions keeps the warm-up's rows of the same model and predicts only the rest
    with Timer() as timer:
        stats = write_predictions(settings, manifest, model, out, batch_size=batch_size)
    assert stats.n_images == len(manifest)
    return timer.figures(len(manifest))


def run_torch(settings: Settings, ref: ModelRef, manifest: pd.DataFrame, batch_size: int) -> tuple[float, float]:
    import torch

    torch.set_num_threads(settings.n_threads)
    torch.manual_seed(0)
    net = make_torch_model()
    paths = [settings.cache / p for p in manifest["model_png"]]

    def batches():
        for i in range(0, len(paths), batch_size):
            yield torch.from_numpy(np.stack([preprocess(p, ref.input_size) for p in paths[i : i + batch_size]]))

    with torch.inference_mode():
        net(next(batches()))  # warm-up
        with Timer() as timer:
            n = sum(len(net(x)) for x in batches())
    assert n == len(manifest)
    return timer.figures(len(manifest))


REPEATS = 3  # passes over the images when the network alone is timed (one pass takes a second or two)


def run_network(
    settings: Settings, ref: ModelRef, manifest: pd.DataFrame, batch_size: int, engine: str
) -> tuple[float, float]:
    """The network alone: images/s and CPU ms per image of `engine` ('torch' eager, or 'onnx': the session
    `infer.load_model` opens for `ref`) on batches preprocessed before the clock starts, REPEATS passes."""
    import torch

    from mammo_pipeline.model.infer import load_model

    batches = [
        np.stack([preprocess(settings.cache / p, ref.input_size) for p in manifest["model_png"][i : i + batch_size]])
        for i in range(0, len(manifest), batch_size)
    ]
    if engine == "torch":
        torch.set_num_threads(settings.n_threads)
        torch.manual_seed(0)
        net = make_torch_model()

        def run(x: np.ndarray) -> int:
            with torch.inference_mode():
                return len(net(torch.from_numpy(x)))
    else:
        session = load_model(settings, ref).session
        name = session.get_inputs()[0].name

        def run(x: np.ndarray) -> int:
            return len(session.run(None, {name: x})[0])

    run(batches[0])  # warm-up
    with Timer() as timer:
        n = sum(run(x) for _ in range(REPEATS) for x in batches)
    return timer.figures(n)


def _child(kind: str, home: str, ref: ModelRef, manifest: pd.DataFrame, batch_size: int, threads: int):
    settings = Settings.under(home, inference_threads=threads)
    if kind.startswith("network-"):
        rate, cpu_ms = run_network(settings, ref, manifest, batch_size, kind.removeprefix("network-"))
    elif kind == "torch":
        rate, cpu_ms = run_torch(settings, ref, manifest, batch_size)
    else:
        rate, cpu_ms = run_onnx(settings, ref, manifest, batch_size, cold=kind == "onnx-cold")
    return rate, cpu_ms, peak_rss_mib()


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, *args) -> tuple[float, float, float]:
    """One path in a fresh spawned process. A ProcessPoolExecutor's shutdown lets the worker exit on its own;
    multiprocessing.Pool's __exit__ terminates it and once hung joining a worker stuck on the task queue's lock."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_child, kind, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="number of images")
    parser.add_argument(
        "--size", type=int, default=SCRATCH.size, help=f"network input side (trainer's default {SCRATCH.size})"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = one per core)")
    parser.add_argument("--int8", action="store_true", help="also measure an int8 quantize_static model")
    parser.add_argument("--second-look", action="store_true", help="also measure the pipeline with a second look")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.under(tmp, inference_threads=args.threads).ensure_dirs()
        manifest = make_pngs(settings, args.n)
        ref = export_model(settings, args.size)
        common = (str(settings.home), manifest, args.batch_size, args.threads)
        print(f"{args.n} PNGs 256 px -> ResNet18 at {args.size} px, batch {args.batch_size}, "
              f"{settings.n_threads} threads")  # fmt: skip
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; 'cpu-bound' = cores / CPU per image")
        base = report("pytorch eager (baseline) ", measure("torch", common[0], ref, *common[1:]))
        report("onnxruntime fp32 pipeline", measure("onnx", common[0], ref, *common[1:]), base)
        if args.int8:
            int8_ref = quantize(settings, ref, manifest)
            report("onnxruntime int8 pipeline", measure("onnx", common[0], int8_ref, *common[1:]), base)
        # The network alone, on the same preprocessed batches: PNG decoding and preprocessing (about 4 CPU ms
        # per 256-px image, the same code on both paths) bound the end-to-end ratio; this is the engine's.
        net_base = report("network alone: pytorch eager", measure("network-torch", common[0], ref, *common[1:]))
        report("network alone: onnx fp32   ", measure("network-onnx", common[0], ref, *common[1:]), net_base)
        if args.int8:
            report("network alone: onnx int8   ", measure("network-onnx", common[0], int8_ref, *common[1:]), net_base)
        if args.second_look:
            with_look = make_display_pngs(settings, manifest)
            look_ref = add_second_look(settings, int8_ref if args.int8 else ref)
            name = f"onnxruntime {'int8' if args.int8 else 'fp32'} + second look"
            look_args = (common[0], look_ref, with_look, *common[2:])
            report(f"{name} (kept candidates)", measure("onnx", *look_args), base)
            report(f"{name} (cut at inference)", measure("onnx-cold", *look_args), base)


def report(name: str, figures: tuple[float, float, float], base: tuple[float, float, float] | None = None):
    """Print one path's figures (and its ratios to the baseline); return them."""
    rate, cpu_ms, rss = figures
    bound = (os.cpu_count() or 1) * 1000 / cpu_ms  # the rate if this process had every core to itself
    ratio = f"  x{rate / base[0]:.2f} wall, x{base[1] / cpu_ms:.2f} CPU" if base else ""
    print(f"{name}: {rate:6.1f} images/s  {cpu_ms:6.1f} CPU ms/image (cpu-bound {bound:6.1f}/s)"
          f"  peak RSS {rss:5.0f} MiB{ratio}")  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
