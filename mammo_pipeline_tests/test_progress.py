from mammo_pipeline.progress import bar, every


def test_every_logs_at_most_once_per_interval_and_at_the_end():
    lines: list[str] = []
    report = every(3600, lines.append, "cached")
    for done in range(1, 11):
        report(done, 10)
    assert lines == [lines[0]] and lines[0].startswith("cached: 10/10")


def test_bar_yields_every_item_silently():
    assert list(bar(range(5), total=5, silent=True)) == [0, 1, 2, 3, 4]
