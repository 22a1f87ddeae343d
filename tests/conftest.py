"""Fixtures shared by the unit tests."""

import pytest
import torch

from dgmbook.utils import torch_threads


@pytest.fixture(autouse=True)
def _no_replay_settings(monkeypatch):
    """Unit tests run without the settings that the chapters' replay gives the whole session
    (``DGMBOOK_REPLAY=published`` turns training off and points at the published cache)."""
    for name in ("DGMBOOK_NO_TRAINING", "DGMBOOK_REMOTE_CACHE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is fastest (a second only adds synchronisation, and spins when
    the cores are busy) and gives results that do not depend on the machine's core count.
    A test module turns it on for all its tests with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with torch_threads(1):
        torch.manual_seed(0)
        yield


@pytest.fixture
def as_rank(monkeypatch):
    """``as_rank(rank, world)``: torch.distributed as one process of a launched group sees
    it, without a group; returns the list to which the process's gathers to rank 0
    (``gather_object``) append what they send."""

    def become(rank: int, world: int) -> list:
        sent: list = []
        dist = torch.distributed
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda: rank)
        monkeypatch.setattr(dist, "get_world_size", lambda: world)
        monkeypatch.setattr(dist, "gather_object",
                            lambda obj, *args, **kwargs: sent.append(obj))
        return sent

    return become


@pytest.fixture(scope="session")
def dialogsum():
    """DialogSum's splits as ``SummaryExample`` lists: ``{"train": ..., "validation": ...,
    "test": ...}`` (dgmbook.summarization.data)."""
    from dgmbook.summarization import data

    return {split: data.load_dialogsum(split) for split in data.DIALOGSUM_SPLITS}


@pytest.fixture(scope="session")
def bpe(dialogsum):
    """A small byte-level BPE tokenizer as the from-scratch model's (1,000 tokens, trained on the
    first 1,000 training dialogues and their summaries, DialogSum's speaker tags as tokens)."""
    from dgmbook.summarization import data

    texts = data.tokenizer_texts(dialogsum["train"][:1000])
    return data.train_tokenizer(texts, vocab_size=1000, extra_tokens=data.SPEAKER_TAGS)
