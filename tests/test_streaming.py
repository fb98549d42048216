"""LocalAgreement-2 without a model."""

from services.asr.streaming import LocalAgreement, split_words


def test_split_words_keeps_whisper_spacing():
    assert split_words(" And so, my") == [" And", " so,", " my"]
    assert "".join(split_words(" And so, my")) == " And so, my"


def test_words_confirmed_by_two_consecutive_hypotheses_become_stable():
    la = LocalAgreement()
    assert la.update(" And so") and la.stable == ""  # one hypothesis confirms nothing
    assert la.text == " And so"
    la.update(" And so my fellow")
    assert la.stable == " And so" and la.text == " And so my fellow"
    la.update(" And so my fellow Americans")
    assert la.stable == " And so my fellow"
    la.update(" And so my fellow Americans ask")
    assert la.stable == " And so my fellow Americans"


def test_disagreement_confirms_only_the_common_prefix():
    la = LocalAgreement()
    la.update(" Ask the")
    la.update(" Ask not what")
    assert la.stable == " Ask"
    la.update(" Ask not what your")
    assert la.stable == " Ask not what"


def test_hypothesis_contradicting_stable_words_is_ignored():
    la = LocalAgreement()
    la.update(" hello there")
    la.update(" hello there friend")
    assert la.stable == " hello there"
    assert not la.update(" yellow there friend")
    assert la.stable == " hello there" and la.text == " hello there friend"


def test_stable_only_grows():
    la = LocalAgreement()
    seen = []
    for hyp in [" a", " a b", " a b c", " a b d", " a b d e", " a b d e f"]:
        la.update(hyp)
        seen.append(la.stable)
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:]))
    assert la.stable == " a b d e"
