from labkit.core import progress


def test_headless_bars_print_one_summary_line(monkeypatch, capsys):
    monkeypatch.setenv(progress.HEADLESS_ENV, "1")
    assert list(progress.tqdm(range(4), desc="quality")) == [0, 1, 2, 3]
    with progress.tqdm(total=3, desc="engine") as bar:
        bar.update(2)
        bar.set_postfix(loss="1.23")
    list(progress.tqdm(range(2), desc="hidden", disable=True))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("quality: 4/4 in ") and out[1].startswith("engine: 2/3 in ") and "loss=1.23" in out[1]
    assert len(out) == 2


def test_a_person_gets_the_real_bar(monkeypatch):
    monkeypatch.delenv(progress.HEADLESS_ENV, raising=False)
    bar = progress.tqdm(range(2), desc="x", disable=True)
    assert type(bar).__module__.startswith("tqdm")
