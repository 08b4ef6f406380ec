"""One progress display per stage: third-party bars stay off."""


def test_bm25_draws_no_bars_of_its_own(capfd):
    from searchr3.baselines import BM25Retriever

    r = BM25Retriever()
    r.index({"a": {"title": "", "text": "the cat sat"}, "b": {"title": "", "text": "paris france"}}, show_progress_bar=True)
    run = r.search({"q": "cat"}, k=2, show_progress_bar=True)
    assert list(run["q"]) == ["a"]
    out = capfd.readouterr()
    assert out.err == "" and out.out == ""  # bm25s draws "Split strings", "Stem Tokens", "BM25S Retrieve"... when asked


def test_model_loading_draws_no_bar(tiny_model_dir, capfd):
    from searchr3 import SearchR3

    capfd.readouterr()
    SearchR3.from_pretrained(tiny_model_dir, bf16=False)
    assert "Loading weights" not in capfd.readouterr().err
