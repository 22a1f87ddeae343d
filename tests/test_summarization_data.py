"""Summarization data: loaders, the BPE tokenizer, encoding with truncation, batching by length,
and the index handling of the course's XSum subset."""

import sys

import pytest
import torch

from dgmbook.summarization import data as sd


@pytest.fixture(scope="module")
def dialogsum() -> dict[str, list[sd.SummaryExample]]:
    return {split: sd.load_dialogsum(split) for split in sd.DIALOGSUM_SPLITS}


@pytest.fixture(scope="module")
def tokenizer(dialogsum):
    texts = sd.tokenizer_texts(dialogsum["train"][:1000])
    return sd.train_tokenizer(texts, vocab_size=1000, extra_tokens=sd.DIALOGSUM_SPEAKERS)


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


def test_tokenizer_round_trip_specials_and_files(tokenizer, dialogsum, tmp_path):
    assert tokenizer.get_vocab_size() == 1000
    assert [tokenizer.token_to_id(t) for t in sd.SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert sd.special_ids(tokenizer) == sd.SpecialIds(pad=0, bos=1, eos=2)
    for ex in dialogsum["test"][:20] + sd.load_xsum_sample()[:20]:  # unseen text, XSum's too
        for text in (ex.document, *ex.references):
            ids = tokenizer.encode(text).ids
            assert tokenizer.token_to_id(sd.UNK) not in ids
            assert tokenizer.decode(ids) == text
    assert tokenizer.encode("#Person2#: hi").tokens[0] == "#Person2#"  # one token, not four
    path = sd.save_tokenizer(tokenizer, tmp_path / "tok" / "bpe.json")
    again = sd.load_tokenizer(path)
    assert again.to_str() == tokenizer.to_str()
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        sd.load_tokenizer(tmp_path / "missing.json")


def test_tokenizer_training_is_deterministic(dialogsum):
    texts = list(sd.tokenizer_texts(dialogsum["validation"]))
    a, b = (sd.train_tokenizer(texts, vocab_size=600) for _ in range(2))
    assert a.to_str() == b.to_str()


def test_encoding_truncates_and_ends_with_eos(tokenizer, dialogsum):
    examples = dialogsum["test"][:50]
    enc = sd.encode_split(tokenizer, examples, max_source_len=32, max_target_len=8)
    assert len(enc) == 50
    for ex, s, t in zip(examples, enc.sources, enc.targets):
        assert len(s) <= 32 and len(t) <= 8 and s[-1] == t[-1] == 2
        assert s[:-1] == tokenizer.encode(ex.document).ids[:31]
        assert t[:-1] == tokenizer.encode(ex.references[0]).ids[:7]  # the first reference
    assert max(map(len, enc.sources)) == 32  # dialogues are longer than 31 tokens
    with pytest.raises(ValueError, match="at least 2"):
        sd.encode_texts(tokenizer, ["a"], max_len=1)


def test_batches_pad_and_shift_the_target(tokenizer, dialogsum):
    enc = sd.encode_split(tokenizer, dialogsum["validation"][:10], 64, 16)
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


def test_training_pipeline_end_to_end(dialogsum):
    """A few steps of dgmbook.summarization.scratch on a tiny model: the result survives torch.save, the
    model reloads, and evaluation reports ROUGE under both multi-reference rules."""
    import io

    from dgmbook.summarization import scratch as S

    cfg = S.TrainConfig(train_examples=64, val_examples=16, vocab_size=500, d_model=32, n_heads=2,
                        n_enc_layers=1, n_dec_layers=1, d_ff=64, max_source_len=64, max_target_len=16,
                        max_len=64, max_steps=3, batch_size=16, warmup_steps=2)
    result = S.train(cfg, show_progress=False)
    assert result["steps"] == 3 and result["curves"]["step"] == [1, 2, 3]
    assert result["curves"]["val_step"] == [3] and result["curves"]["lr"][0] == pytest.approx(1e-3 / 2)
    buffer = io.BytesIO()
    torch.save(result, buffer)
    buffer.seek(0)
    model, tokenizer = S.load_trained(torch.load(buffer, weights_only=False))
    assert tokenizer.get_vocab_size() == 500 and not model.training
    scores = S.evaluate(model, tokenizer, dialogsum["test"][:4], S.DecodeConfig(max_new_tokens=8),
                        max_source_len=64)
    assert set(scores["rouge_max"]) == set(scores["rouge_first"]) == {"rouge1", "rouge2", "rougeL"}
    assert scores["rouge_max"]["rouge1"] >= scores["rouge_first"]["rouge1"]
    assert len(scores["predictions"]) == 4
    with pytest.raises(ValueError, match="training budget"):
        S.TrainConfig()


def test_repetition_statistics(tokenizer):
    from dgmbook.summarization import scratch as S

    assert S.longest_token_run(tokenizer, "") == 0
    assert S.longest_token_run(tokenizer, "the new job") == 1
    assert S.longest_token_run(tokenizer, "the new new new job") == 3
    stats = S.repetition_stats(tokenizer, ["the new new job", "a job", "a job"])
    assert stats == {"repeated": 1, "longest_run": 2, "distinct": 2, "n": 3}


def test_course_recipe_runs_on_tiny_stand_in_data(monkeypatch, tokenizer):
    """The course's XSum recipe (hub data and the t5-small tokenizer, not reachable in CI) goes
    through the same training code: here its loaders return 24 real XSum pairs and a small BPE
    tokenizer, and the model is shrunk; the recipe's own settings are checked as they are."""
    from dataclasses import replace

    from dgmbook.summarization import scratch as S

    course = S.course_config()
    assert (course.data, course.tokenizer, course.epochs) == ("xsum-cs182", "t5-small", 5)
    assert (course.d_model, course.n_heads, course.n_enc_layers, course.n_dec_layers, course.d_ff) == (
        512, 8, 6, 6, 2048)
    assert (S.course_decode().num_beams, S.course_decode().max_new_tokens) == (4, 20)
    pairs = sd.load_xsum_sample()[:24]
    asked = []
    monkeypatch.setattr(sd, "load_xsum_cs182", lambda split: asked.append(split) or pairs)
    monkeypatch.setattr(sd, "pretrained_tokenizer", lambda name: asked.append(name) or tokenizer)
    tiny = replace(course, d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, d_ff=64,
                   max_source_len=64, max_target_len=16, max_len=64, epochs=None, max_steps=2,
                   batch_size=8, warmup_steps=1)
    result = S.train(tiny, show_progress=False)
    assert asked == ["train", "validation", "t5-small"] and result["steps"] == 2
    model, tok = S.load_trained(result)
    out = S.summarize(model, tok, [pairs[0].document], S.course_decode(), max_source_len=64)
    assert len(out) == 1 and isinstance(out[0], str)


def test_source_use_sees_whether_the_document_matters():
    """source_use compares the loss with each example's own document against another's: zero gain
    for a model whose decoder cannot see the document (cross-attention output zeroed), a positive
    gain for one that copies it (trained briefly on a copy task)."""
    from dgmbook.summarization import model as seq2seq
    from dgmbook.summarization import scratch as S

    torch.manual_seed(0)
    cfg = seq2seq.Seq2SeqConfig(vocab_size=40, d_model=64, n_heads=4, n_enc_layers=1, n_dec_layers=1,
                                d_ff=128, max_len=32, dropout=0.0)
    model = seq2seq.Seq2SeqTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):  # copy 8 random tokens
        src = torch.randint(3, 40, (16, 8))
        tgt_in = torch.cat([torch.full((16, 1), cfg.bos_id), src[:, :-1]], 1)
        loss = model.loss(src, tgt_in, src)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ids = sd.SpecialIds(pad=cfg.pad_id, bos=cfg.bos_id, eos=cfg.eos_id)
    rows = torch.randint(3, 40, (64, 8)).tolist()
    split = sd.EncodedSplit([], rows, rows, ids)
    copying = S.source_use(model, split, batch_size=16)
    assert copying["gain"] > 1.0 and copying["gain"] == pytest.approx(copying["wrong"] - copying["right"])
    for layer in model.decoder:  # cut the decoder off from the encoder
        torch.nn.init.zeros_(layer.cross_attn.out_proj.weight)
        torch.nn.init.zeros_(layer.cross_attn.out_proj.bias)
    assert S.source_use(model, split, batch_size=16)["gain"] == pytest.approx(0.0, abs=1e-6)
