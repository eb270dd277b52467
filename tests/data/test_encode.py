"""SegmentTokenizer: batching, the per-token unmask rule of a policy, decoding helpers."""

from __future__ import annotations

import pytest

from parsit_data.errors import ParsitError
from parsit_data.templates import Segment, get_template
from parsit_data.decode import decode_ids, marked_text, supervised_runs
from parsit_data.encode import SegmentTokenizer
from tests.data.templates_support import RECORDS, qwen


def test_batch_equals_one_by_one_and_cache_is_transparent():
    t = get_template("qwen_1_5")
    batch = [t.render(r) for r in RECORDS.values()]
    st = SegmentTokenizer(qwen())
    together = st.tokenize_batch(batch)
    again = st.tokenize_batch(batch)  # now served from the piece cache
    alone = [SegmentTokenizer(qwen()).tokenize_batch([b])[0] for b in batch]
    for x, y, z in zip(together, again, alone):
        assert x.input_ids == y.input_ids == z.input_ids
        assert x.labels == y.labels == z.labels


def test_unmask_supervises_exactly_the_named_tokens():
    segs = [Segment("<|im_start|>", True), Segment("user\nA\nB\n\nC", False), Segment("<|im_end|>", True),
            Segment("\n", False)]
    st = SegmentTokenizer(qwen())
    plain = st.tokenize_batch([segs])[0]
    assert set(plain.labels) == {-100}
    out = st.tokenize_batch([segs], ("<|im_start|>", "<|im_end|>", "\n"))[0]
    assert out.input_ids == plain.input_ids
    for x, y in zip(out.input_ids, out.labels):
        assert y == (x if x in (151644, 151645, 198) else -100)
    assert 271 in out.input_ids  # "\n\n" is another token, not unmasked
    with pytest.raises(ParsitError, match="not one token"):
        st.tokenize_batch([segs], ("hello world",))


def test_decode_and_marks():
    tok = qwen()
    ids = [151644, 872, 198, -200, 198, 3838, 151645]
    labels = [-100, -100, -100, -100, 198, 3838, 151645]
    assert decode_ids(tok, ids) == "<|im_start|>user\n<image>\nWhat<|im_end|>"
    assert [s for s, _ in supervised_runs(ids, labels)] == [False, True]
    assert marked_text(tok, ids, labels) == "<|im_start|>user\n<image>⟦\nWhat<|im_end|>⟧"
