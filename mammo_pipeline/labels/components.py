"""The labeling app's HTML pieces: small functions that return FastHTML (FT) trees, no state, no database."""

from __future__ import annotations

from collections import OrderedDict
from html import escape as esc

from fasthtml import common as fh

from mammo_pipeline.labels.agreement import kappa_text
from mammo_pipeline.labels.codes import LABELS, label_of
from mammo_pipeline.labels.queues import QUEUES

KEY_NAMES = {1: "biopsy marker", 2: "magnification view", 3: "neither", 4: "both"}
QUEUE_TITLES = {
    "unlabeled": "Unlabeled",
    "low_confidence": "Low confidence",
    "disagreements": "Model disagrees",
    "meta_conflicts": "Metadata conflicts",
    "needs_review": "Needs review",
    "audit": "Audit set",
    "adjudication": "Adjudication",
    "audit_recheck": "Audit recheck",
}
HELP = [
    ("1", "biopsy marker"),
    ("2", "magnification view"),
    ("3", "neither"),
    ("4", "both"),
    ("s", "skip this image"),
    ("z / Backspace", "undo your last label"),
    ("m", "show or hide the model hint"),
    ("h", "show or hide the model's heat map"),
    ("f / mouse wheel", "full-resolution crop around the pointer (wheel down or Esc closes it)"),
    ("+ / - / 0", "zoom in, out, reset (or click the image)"),
    ("i", "invert"),
    ("?", "this help"),
]


def key_bar() -> fh.FT:
    """The label keys. They live OUTSIDE the swapped card; app.js sends each press with the id of the image on
    screen at that moment (never read later), and shows the preloaded next image at once."""
    buttons = [
        fh.Button(
            fh.Kbd(str(code)),
            fh.Span(KEY_NAMES[code]),
            type="button",
            data_action="label",
            data_label=str(code),
            cls=f"key label-{LABELS[code]}",
        )
        for code in LABELS
    ]
    buttons += [
        fh.Button(fh.Kbd("s"), fh.Span("skip"), type="button", data_action="skip", cls="key minor"),
        fh.Button(fh.Kbd("z"), fh.Span("undo"), type="button", data_action="undo", cls="key minor"),
    ]
    return fh.Div(*buttons, id="keys")


def _prediction(image: dict) -> fh.FT:
    if image.get("p_biopsy") is None:
        return fh.Span("model: no prediction yet", cls="hint muted")
    pb, pm = float(image["p_biopsy"]), float(image["p_mag"])
    return fh.Span(
        "model: ",
        fh.B(label_of(pb >= 0.5, pm >= 0.5)),
        f"  p(biopsy) {pb:.2f} · p(mag) {pm:.2f}",
        cls="hint",
        title=f"model {image.get('model_version') or '?'}",
    )


def _reads(image: dict) -> list[fh.FT]:
    """The two blind reads of a disputed audit image (shown to the adjudicator only)."""
    return [
        fh.Span(f"read {n}: {LABELS[int(image[f'read{n}'])]} ({image[f'reader{n}']})", cls="tag labeled")
        for n in (1, 2)
        if image.get(f"read{n}") is not None
    ]


def adjudicates(image: dict, queue: str, viewer: str) -> bool:
    """Whether `viewer` sees an audit image's two reads: in the adjudication queue, once both reads are in and
    disagree (audit_state 3, or 4 when adjudicated), and not one of its two readers. The queue name comes from
    the browser: a reader who opens their own disputed image there stays blind, and so does a second reader who
    opens an image with one read there (`?image_id=…&q=adjudication`)."""
    disputed = image.get("audit_state") in (3, 4)
    return queue == "adjudication" and disputed and viewer not in {image.get("reader1"), image.get("reader2")}


def slide(image: dict, queue: str, blind: bool, shown: bool, viewer: str = "") -> fh.FT:
    """One image with its state (id, seen event) and tags. Audit reads are blind: no model hint, no other
    annotator's label; the adjudication queue shows a third annotator the two reads to decide between."""
    iid = int(image["id"])
    current = image.get("label")
    meta = {None: "no metadata flag", True: "metadata: magnified", False: "metadata: not magnified"}
    meta_mag = None if image.get("meta_mag") is None else bool(image["meta_mag"])
    audit = image["split"] == "audit"
    info = [
        fh.Span(f"#{iid}", cls="tag"),
        fh.Span(image["hospital"], cls="tag"),
        fh.Span(image["split"], cls=f"tag split-{image['split']}"),
        fh.Span(meta[meta_mag], cls="tag"),
    ]
    if audit and adjudicates(image, queue, viewer):
        info += _reads(image)
    elif audit:
        info.append(fh.Span("blind read", cls="tag"))
    elif current is not None:
        info.append(fh.Span(f"labeled {LABELS[int(current)]} by {image['annotator']}", cls="tag labeled"))
    if not blind and not audit:
        info.append(_prediction(image))
    img = fh.Img(src=f"/img/{iid}", alt=f"image {iid}", draggable="false", cls="shot", data_image_id=str(iid))
    if shown:
        img.attrs["id"] = "shot"
    return fh.Div(
        fh.Div(img, cls="viewer"),
        fh.Div(*info, cls="info"),
        cls="slide",
        hidden=not shown,
        data_image_id=str(iid),
        data_seen_event=str(int(image.get("event_id") or 0)),
    )


_SLIDES: OrderedDict[tuple, str] = OrderedDict()
_SLIDES_KEPT = 4096


def slide_html(image: dict, queue: str, blind: bool, shown: bool, viewer: str = "") -> fh.NotStr:
    """`slide` rendered once per state of the image (the key is every field of its row): a slide is sent up to
    AHEAD + 1 times as it moves up the queue, hidden, then on screen."""
    key = (tuple(image.items()), queue, blind, adjudicates(image, queue, viewer))
    html = _SLIDES.get(key)
    if html is None:
        html = _SLIDES[key] = fh.to_xml(slide(image, queue, blind, False, viewer))
        if len(_SLIDES) > _SLIDES_KEPT:
            _SLIDES.popitem(last=False)
    if shown:
        html = html.replace("<div hidden ", "<div ", 1).replace('class="shot"', 'id="shot" class="shot"', 1)
    return fh.NotStr(html)


def card(
    image: dict | None,
    queue: str,
    note: str,
    remaining: int,
    upcoming: list[dict],
    blind: bool,
    viewer: str = "",
    skipped: int = 0,
) -> fh.FT:
    """The swapped region: the image on screen, the next ones already loaded (hidden) so a key press shows the
    next at once, and the state of the image on screen (#image_id, #seen_event) that app.js keeps current. An
    empty queue says how many images this session skipped (`skipped`: they are left out of every queue until
    the session ends) and offers them again."""
    state = [fh.Input(type="hidden", id="q", name="q", value=queue)]
    if image is None:
        return fh.Div(
            *state,
            fh.Input(type="hidden", id="image_id", name="image_id", value=""),
            fh.Input(type="hidden", id="seen_event", name="seen_event", value=""),
            fh.Div(
                fh.P(f"Nothing left in “{QUEUE_TITLES.get(queue, queue)}”."),
                fh.P(f"You skipped {skipped} image(s) in this session; they are left out of every queue.")
                if skipped
                else None,
                fh.Button("Show the skipped images again", hx_post="/unskip", cls="small")
                if skipped
                else fh.P("Pick another queue above."),
                cls="empty",
            ),
            id="card",
        )
    iid = int(image["id"])
    return fh.Div(
        *state,
        fh.Input(type="hidden", id="image_id", name="image_id", value=str(iid)),
        fh.Input(type="hidden", id="seen_event", name="seen_event", value=str(int(image.get("event_id") or 0))),
        fh.Div(
            slide_html(image, queue, blind, True, viewer),
            *[slide_html(u, queue, blind, False, viewer) for u in upcoming],
            cls="slides",
        ),
        fh.Div(f"{remaining} left · {note}", cls="qnote"),
        id="card",
        data_image_id=str(iid),
    )


# The three pieces every key press answers with are written as HTML strings (escaped): building FT trees for
# them took most of a key press (about 0.2 ms per element on the shared 2-core machine).
def _oob(oob: bool) -> str:
    return ' hx-swap-oob="true"' if oob else ""


def queue_nav(counts: dict[str, tuple[int, int]], current: str, oob: bool = False) -> fh.NotStr:
    links = "".join(
        f'<a href="/?q={name}" class="{"queue active" if name == current else "queue"}" title="{esc(QUEUES[name])}">'
        f'{esc(QUEUE_TITLES[name])}<span class="count">{left}/{total}</span></a>'
        for name in QUEUES
        for left, total in [counts.get(name, (0, 0))]
    )
    return fh.NotStr(f'<nav{_oob(oob)} id="queues">{links}</nav>')


def recent_list(rows: list[dict], oob: bool = False) -> fh.NotStr:
    """The last decisions; clicking one brings its image back to relabel it."""
    items = "".join(
        f'<li><a href="#" hx-get="/card?image_id={int(r["image_id"])}" hx-swap="outerHTML" hx-include="#q" '
        f'hx-target="#card"><span class="rid">#{int(r["image_id"])}</span><span class="rlabel '
        f'label-{esc(r["label_name"])}">{esc(r["label_name"])}</span><span class="muted">{esc(r["hospital"])}</span>'
        f"</a></li>"
        for r in rows
    )
    body = f"<ol>{items}</ol>" if items else '<p class="muted">No labels yet.</p>'
    return fh.NotStr(f'<div{_oob(oob)} id="recent"><h3>Your last decisions</h3>{body}</div>')


def tools() -> fh.FT:
    """Brightness, contrast, zoom and invert: CSS filters applied in the browser, no round trip."""

    def slider(name: str, label: str, lo: float, hi: float, step: float, value: float) -> fh.FT:
        return fh.Label(label, fh.Input(type="range", min=lo, max=hi, step=step, value=value, data_var=name))

    return fh.Div(
        fh.H3("View"),
        slider("--bright", "Brightness", 0.3, 2.5, 0.05, 1),
        slider("--contrast", "Contrast", 0.3, 3, 0.05, 1),
        slider("--zoom", "Zoom", 1, 4, 0.25, 1),
        fh.Label(fh.Input(type="checkbox", id="invert"), " Invert", cls="check"),
        fh.Button("Reset view", id="reset-view", type="button", cls="small"),
        id="tools",
    )


def help_overlay() -> fh.FT:
    rows = [fh.Tr(fh.Td(fh.Kbd(k)), fh.Td(text)) for k, text in HELP]
    return fh.Div(
        fh.Div(fh.H2("Keyboard"), fh.Table(*rows), fh.P("Press ? or Esc to close.", cls="muted"), cls="panel"),
        id="help",
        hidden=True,
    )


def header(annotator: str, counts: dict[str, tuple[int, int]], queue: str, blind: bool, team: bool) -> fh.FT:
    right = [
        fh.Span(annotator, cls="who", title="annotator"),
        fh.A("Review", href="/review"),
        fh.A("Export", href="/export.csv", title="every label event with provenance (CSV); /export.jsonl too"),
        fh.Button("Blind: on" if blind else "Blind: off", hx_post="/blind", cls="small", title="hide the model's hint"),
        fh.Button("?", id="help-button", type="button", cls="small", title="keyboard help"),
    ]
    if team:
        right.append(fh.Form(fh.Button("Sign out", cls="small"), method="post", action="/logout"))
    return fh.Header(
        fh.Div("mammo", fh.Span(" · labeling", cls="muted"), cls="brand"),
        queue_nav(counts, queue),
        fh.Div(*right, cls="right"),
    )


def label_page(annotator, counts, queue, blind, team, the_card, recent) -> tuple:
    return (
        fh.Title("mammo · labeling"),
        header(annotator, counts, queue, blind, team),
        fh.Main(
            fh.Section(the_card, id="stage"),
            fh.Aside(tools(), recent_list(recent), cls="side"),
            cls="layout",
        ),
        fh.Footer(key_bar()),
        help_overlay(),
        fh.Div(fh.Img(id="loupe-img", alt="full-resolution crop"), id="loupe", hidden=True),
        fh.Div(id="toast", role="status", aria_live="polite"),
    )


def agreement_section(stats: dict) -> fh.FT:
    """Cohen's κ between the blind audit readers and each reader's agreement with the audit truth."""
    k = stats["kappa"]
    pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    rows = [
        fh.Tr(
            fh.Td(name),
            fh.Td(str(r["reads"])),
            fh.Td(pct(r["agree_truth"])),
            fh.Td(str(r["n_adjudicated"])),
            fh.Td(pct(r["agree_adjudicated"])),
        )
        for name, r in stats["per_reader"].items()
    ]
    pairs = [fh.Li(f"{pair.replace('|', ' vs ')}: κ = {kappa_text(v)}") for pair, v in stats["kappa_by_pair"].items()]
    return fh.Div(
        fh.H2("Audit reads (blind, double, adjudicated)"),
        fh.P(
            f"{stats['n_read']} audit images read, {stats['n_double']} by two readers: {stats['n_agreed']} agreed, ",
            fh.A(f"{stats['n_disputed']} waiting for adjudication", href="/?q=adjudication"),
            f", {stats['n_adjudicated']} adjudicated.",
        ),
        fh.P("Cohen's κ between the two readers: ", fh.B(kappa_text(k), id="kappa")),
        fh.Ul(*pairs) if len(pairs) > 1 else "",
        fh.Table(
            fh.Thead(
                fh.Tr(
                    fh.Th("reader"),
                    fh.Th("reads"),
                    fh.Th("agree with audit truth"),
                    fh.Th("adjudicated images"),
                    fh.Th("agree with the adjudication"),
                )
            ),
            fh.Tbody(*rows),
            cls="review",
            id="readers",
        )
        if rows
        else fh.P("No double reads yet.", cls="muted"),
        id="agreement",
    )


def review_page(annotator: str, rows: list[dict], stats: dict | None = None) -> tuple:
    """Audit agreement, then training images where annotators disagree; open one to relabel it."""
    body = [
        fh.Tr(
            fh.Td(fh.Img(src=f"/img/{r['image_id']}/model", cls="thumb", alt=f"image {r['image_id']}")),
            fh.Td(f"#{r['image_id']}"),
            fh.Td(r["hospital"]),
            fh.Td(", ".join(f"{who}: {lab}" for who, lab in r["labels"].items())),
            fh.Td(fh.A("open", href=f"/?image_id={r['image_id']}")),
        )
        for r in rows
    ]
    table = (
        fh.Table(
            fh.Thead(fh.Tr(fh.Th(""), fh.Th("image"), fh.Th("hospital"), fh.Th("labels"), fh.Th(""))),
            fh.Tbody(*body),
            cls="review",
        )
        if rows
        else fh.P("No disagreements between annotators.", cls="muted")
    )
    return (
        fh.Title("mammo · review"),
        fh.Header(
            fh.Div("mammo", fh.Span(" · review", cls="muted"), cls="brand"),
            fh.Div(fh.Span(annotator, cls="who"), fh.A("Back to labeling", href="/"), cls="right"),
        ),
        fh.Main(
            fh.Section(
                agreement_section(stats) if stats is not None else "",
                fh.H2(f"Annotators disagree on {len(rows)} training image(s)"),
                table,
                cls="page",
            ),
            cls="single",
        ),
    )


def login_page(error: str = "") -> tuple:
    return (
        fh.Title("mammo · sign in"),
        fh.Main(
            fh.Form(
                fh.H2("Sign in to label"),
                fh.Input(name="name", placeholder="annotator", autofocus=True, autocomplete="username"),
                fh.Input(name="password", type="password", placeholder="password", autocomplete="current-password"),
                fh.Button("Sign in"),
                fh.P(error, cls="error") if error else "",
                method="post",
                action="/login",
                cls="login",
            ),
            cls="single",
        ),
    )
