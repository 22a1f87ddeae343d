"""Summarization data (dgmbook.summarization.data): loaders, the BPE tokenizer and its speaker tags
(one token each, with the space before them), encoding with truncation, batching by length,
padding, and the index handling of the course's XSum subset."""

import sys

import pytest
import torch

from dgmbook.summarization import data as sd


pytestmark = pytest.mark.usefixtures("one_thread")


def test_loaders_give_the_published_sizes(dialogsum):
    assert [len(dialogsum[s]) for s in sd.DIALOGSUM_SPLITS] == [12460, 500, 500]
    assert all(len(ex.references) == 1 for ex in dialogsum["train"] + dialogsum["validation"])
    assert all(len(ex.references) == 3 for ex in dialogsum["test"])
    first = dialogsum["test"][0]
    assert first.id == "test_0" and first.document.startswith("#Person1#: Ms. Dawson")
    assert first.references[1].startswith("In order to prevent employees")  # summary2
    xsum = sd.load_xsum_sample()
    assert len(xsum) == 1000 and all(len(ex.references) == 1 for ex in xsum)
    assert len({ex.id for ex in xsum}) == 1000
    with pytest.raises(ValueError, match="no split 'dev'"):
        sd.load_dialogsum("dev")


def test_tokenizer_round_trip_specials_and_files(bpe, dialogsum, tmp_path):
    assert bpe.get_vocab_size() == 1000
    assert [bpe.token_to_id(t) for t in sd.SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert sd.special_ids(bpe) == sd.SpecialIds(pad=0, bos=1, eos=2)
    for ex in dialogsum["test"][:20] + sd.load_xsum_sample()[:20]:  # unseen text, XSum's too
        for text in (ex.document, *ex.references):
            ids = bpe.encode(text).ids
            assert bpe.token_to_id(sd.UNK) not in ids
            assert bpe.decode(ids) == sd.spaced_tags(text)  # the text itself where it has no tag
    for ex in sd.load_xsum_sample()[:20]:
        assert bpe.decode(bpe.encode(ex.document).ids) == ex.document
    assert bpe.encode("#Person2#: hi").tokens[0] == "#Person2#"  # one token, not four
    path = sd.save_tokenizer(bpe, tmp_path / "tok" / "bpe.json")
    again = sd.load_tokenizer(path)
    assert again.to_str() == bpe.to_str()
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        sd.load_tokenizer(tmp_path / "missing.json")


def test_spaced_tags_by_hand():
    """The whitespace before a speaker tag, or none, becomes one space; nothing else changes."""
    assert sd.spaced_tags("tells #Person1# about") == "tells #Person1# about"
    assert sd.spaced_tags("#Person1#: Hi.\n#Person2#: Hello.") == " #Person1#: Hi. #Person2#: Hello."
    assert sd.spaced_tags("day.#Person1#  \t#Person2#'s") == "day. #Person1# #Person2#'s"
    assert sd.spaced_tags("no  tags\nhere ") == "no  tags\nhere "
    assert sd.spaced_tags("#Person8# is not a tag") == "#Person8# is not a tag"
    assert sd.spaced_tags("a <x>", tags=("<x>",)) == "a <x>" and sd.spaced_tags("a", tags=()) == "a"


def test_a_speaker_tag_takes_in_the_space_before_it(bpe, tmp_path):
    """Speaker tags are single tokens with no space token in front: " #Person1#" is the id of
    "#Person1#", so a doubled tag is one id twice in a row (what the no-immediate-repeat rule
    sees), and decoding puts the spaces back."""
    tag = bpe.token_to_id("#Person1#")
    assert tag is not None and bpe.encode(" #Person1#").ids == [tag]
    assert bpe.encode("\n#Person1#").ids == [tag]
    assert bpe.encode("#Person1# #Person1#").ids == [tag, tag]
    ids = bpe.encode("#Person2# tells #Person1# about #Person1#'s job.").ids
    assert ids.count(tag) == 2 and bpe.token_to_id("\u0120") not in ids  # no lone space token
    assert bpe.decode(ids) == " #Person2# tells #Person1# about #Person1#'s job."
    assert bpe.decode(bpe.encode("tells #Person1# about").ids) == "tells #Person1# about"
    again = sd.load_tokenizer(sd.save_tokenizer(bpe, tmp_path / "bpe.json"))  # as the cache keeps it
    assert again.encode("#Person1# #Person1#").ids == [tag, tag]
    assert again.decode(bpe.encode("tells #Person1# about").ids) == "tells #Person1# about"


def test_real_summaries_round_trip(bpe, dialogsum):
    """Every reference summary of DialogSum's validation and test splits decodes back to itself,
    up to the spacing in front of its speaker tags (spaced_tags), and stripped as summarize
    strips a generated summary, to itself wherever one space stood before each tag."""
    summaries = [r for split in ("validation", "test") for ex in dialogsum[split] for r in ex.references]
    assert len(summaries) == 2000
    encodings = bpe.encode_batch(summaries, add_special_tokens=False)
    decoded = bpe.decode_batch([e.ids for e in encodings], skip_special_tokens=True)
    assert all(d == sd.spaced_tags(s) for s, d in zip(summaries, decoded))
    exact = sum(d.strip() == s for s, d in zip(summaries, decoded))
    assert exact >= 0.99 * len(summaries)  # DialogSum writes one space before a tag, nearly always
    tags = set(sd.SPEAKER_TAGS)
    assert all(not any(t == "Ġ" and n.lstrip() in tags for t, n in zip(e.tokens, e.tokens[1:]))
               for e in encodings)  # never a space token right before a tag


def test_tokenizer_training_is_deterministic(dialogsum):
    texts = list(sd.tokenizer_texts(dialogsum["validation"]))
    a, b = (sd.train_tokenizer(texts, vocab_size=600) for _ in range(2))
    assert a.to_str() == b.to_str()


def test_encoding_truncates_and_ends_with_eos(bpe, dialogsum):
    examples = dialogsum["test"][:50]
    enc = sd.encode_split(bpe, examples, max_source_len=32, max_target_len=8)
    assert len(enc) == 50
    for ex, s, t in zip(examples, enc.sources, enc.targets):
        assert len(s) <= 32 and len(t) <= 8 and s[-1] == t[-1] == 2
        assert s[:-1] == bpe.encode(ex.document).ids[:31]
        assert t[:-1] == bpe.encode(ex.references[0]).ids[:7]  # the first reference
    assert max(map(len, enc.sources)) == 32  # dialogues are longer than 31 tokens
    with pytest.raises(ValueError, match="at least 2"):
        sd.encode_texts(bpe, ["a"], max_len=1)


def test_batches_pad_and_shift_the_target(bpe, dialogsum):
    enc = sd.encode_split(bpe, dialogsum["validation"][:10], 64, 16)
    batch = enc.batch([3, 7, 1])
    assert batch.src.shape == (3, max(len(enc.sources[i]) for i in (3, 7, 1)))
    assert len(batch) == 3 and batch.index.tolist() == [3, 7, 1]
    for row, i in enumerate((3, 7, 1)):
        n = len(enc.targets[i])
        assert batch.tgt_out[row, :n].tolist() == enc.targets[i]
        assert batch.tgt_in[row, 0] == 1 and batch.tgt_in[row, 1:n].tolist() == enc.targets[i][:-1]
        assert (batch.tgt_out[row, n:] == 0).all() and (batch.tgt_in[row, n:] == 0).all()
        assert (batch.src[row, len(enc.sources[i]) :] == 0).all()


@pytest.mark.parametrize("shuffle", [True, False])
def test_batching_covers_every_example_once(shuffle):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 300, (1003,), generator=g).tolist()
    batches = sd.length_batches(lengths, 16, shuffle=shuffle, seed=1, epoch=0, bucket_factor=8)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1003))
    assert all(len(b) <= 16 for b in batches) and sum(len(b) < 16 for b in batches) <= 1
    # batching by length wastes far less padding than random batches would
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.25 * sum(lengths)


def test_batching_is_deterministic_per_seed_and_epoch():
    lengths = list(range(200))
    def batches(seed: int, epoch: int) -> list[list[int]]:
        return sd.length_batches(lengths, 8, shuffle=True, seed=seed, epoch=epoch, bucket_factor=5)

    assert batches(3, 1) == batches(3, 1)
    assert batches(3, 1) != batches(3, 2) and batches(3, 1) != batches(4, 1)
    ordered = sd.length_batches(lengths, 8, shuffle=False)
    assert ordered[0] == list(range(199, 191, -1))  # longest first


def test_pad_sequences_and_progress_bar():
    padded = sd.pad_sequences([[5, 6, 7], [8], [9, 10]], -1, multiple=1)
    assert padded.dtype == torch.long
    assert padded.tolist() == [[5, 6, 7], [8, -1, -1], [9, 10, -1]]
    # by default the length is rounded up to a multiple of 32: few shapes for the CPU kernels
    rounded = sd.pad_sequences([[5] * 33, [8]], 0)
    assert rounded.shape == (2, 64) and rounded[0, :33].tolist() == [5] * 33
    assert rounded[0, 33:].eq(0).all() and sd.pad_sequences([[1] * 32], 0).shape == (1, 32)
    assert sd.progress_bar(False, total=3).disable and not sd.progress_bar(True, total=3).disable
    assert list(sd.progress_bar(None, iterable=[1, 2])) == [1, 2]


def test_cs182_indices_and_subset_selection(monkeypatch):
    idx = sd.load_cs182_indices()
    assert {k: len(v) for k, v in idx.items()} == {"train": 24350, "validation": 1281, "test": 1326}
    rows = [{"id": str(100 + i), "document": f"doc {i}", "summary": f"sum {i}"} for i in range(6)]
    picked = sd.select_subset(rows, [0, 2, 5])
    assert picked == [sd.SummaryExample(str(100 + i), f"doc {i}", (f"sum {i}",)) for i in (0, 2, 5)]
    with pytest.raises(ValueError, match="out of range"):
        sd.select_subset(rows, [1, 6])
    with pytest.raises(ValueError, match="strictly increasing"):
        sd.check_indices([3, 3])
    with pytest.raises(ValueError, match="non-negative"):
        sd.check_indices([-1, 2])
    monkeypatch.setitem(sys.modules, "datasets", None)  # as on a machine without `datasets`
    with pytest.raises(RuntimeError, match="needs the `datasets` package"):
        sd.load_xsum_cs182("validation")
