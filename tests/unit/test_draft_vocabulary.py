"""The draft model's vocabulary check (pure logic) and the numpy-backed batch it decodes with."""

from __future__ import annotations

import numpy as np
import pytest

from gallama.engines.llama_cpp.draft_model import MAX_VOCAB_SIZE_DIFFERENCE, vocabulary_mismatch
from gallama.engines.llama_cpp.batch import TokenBatch

VOCAB = [b"<s>", b"a", b"b", b" the"]


def test_same_vocabulary_matches():
    assert vocabulary_mismatch(VOCAB, list(VOCAB)) is None


def test_padding_within_the_tolerance_matches():
    assert vocabulary_mismatch(VOCAB, VOCAB + [b"<pad>"] * MAX_VOCAB_SIZE_DIFFERENCE) is None


def test_a_different_token_is_named():
    reason = vocabulary_mismatch(VOCAB, [b"<s>", b"a", b"c", b" the"])
    assert reason == "token 2 is b'b' in the main model but b'c' in the draft model"


def test_a_much_larger_vocabulary_is_refused():
    reason = vocabulary_mismatch(VOCAB, VOCAB + [b"x"] * (MAX_VOCAB_SIZE_DIFFERENCE + 1))
    assert reason == f"the main model has 4 tokens and the draft model {5 + MAX_VOCAB_SIZE_DIFFERENCE}"


def test_token_batch_rows_and_logit_flags():
    batch = TokenBatch(8)
    first = batch.add([5, 6, 7], first_pos=10, seq_id=2)
    drafts = batch.add([1, 2], first_pos=0, seq_id=0, logits="all")
    chunk = batch.add([9], first_pos=3, seq_id=1, logits="none")
    assert (first, drafts, chunk) == (range(0, 3), range(3, 5), range(5, 6))
    assert batch.room == 2
    assert batch.token[:6].tolist() == [5, 6, 7, 1, 2, 9]
    assert batch.pos[:6].tolist() == [10, 11, 12, 0, 1, 3]
    assert batch.seq_id[:6].tolist() == [2, 2, 2, 0, 0, 1]
    assert batch.logits[:6].tolist() == [0, 0, 1, 1, 1, 0]
    # The struct llama.cpp reads points at the same memory, one sequence id per row.
    struct = batch._struct
    assert [struct.seq_id[i][0] for i in range(6)] == [2, 2, 2, 0, 0, 1]
    assert np.ctypeslib.as_array(struct.pos, shape=(6,)).tolist() == [10, 11, 12, 0, 1, 3]


def test_token_batch_refuses_overflow():
    batch = TokenBatch(2)
    with pytest.raises(ValueError, match="overflow"):
        batch.add([1, 2, 3], first_pos=0, seq_id=0)
