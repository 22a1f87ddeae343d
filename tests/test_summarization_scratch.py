"""From-scratch training (dgmbook.summarization.scratch): the training pipeline end to end on a
tiny model, the course's recipe through the same code, and whether a model reads its input."""

import io
from dataclasses import replace

import pytest
import torch

from dgmbook.summarization import data as sd
from dgmbook.summarization import model as seq2seq
from dgmbook.summarization import scratch as S
from dgmbook.summarization.decoding import DecodeConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_pipeline_end_to_end(dialogsum):
    """A few steps of training on a tiny model: the result survives torch.save, the model
    reloads, and evaluation reports ROUGE under both multi-reference rules."""
    tiny = seq2seq.Seq2SeqConfig(vocab_size=500, d_model=32, n_heads=2, n_enc_layers=1,
                                 n_dec_layers=1, d_ff=64, max_len=64)
    cfg = S.TrainConfig(train_examples=64, val_examples=16, model=tiny, max_source_len=64,
                        max_target_len=16, max_steps=3, batch_size=16, warmup_steps=2)
    result = S.train(cfg, show_progress=False)
    assert result["steps"] == 3 and result["curves"]["step"] == [1, 2, 3]
    assert result["curves"]["val_step"] == [3] and result["curves"]["lr"][0] == pytest.approx(1e-3 / 2)
    buffer = io.BytesIO()
    torch.save(result, buffer)
    buffer.seek(0)
    model, tokenizer = S.load_trained(torch.load(buffer, weights_only=False))
    assert tokenizer.get_vocab_size() == 500 and not model.training
    scores = S.evaluate(model, tokenizer, dialogsum["test"][:4], DecodeConfig(max_new_tokens=8),
                        max_source_len=64)
    assert set(scores["rouge_max"]) == set(scores["rouge_first"]) == {"rouge1", "rouge2", "rougeL"}
    assert scores["rouge_max"]["rouge1"] >= scores["rouge_first"]["rouge1"]
    assert len(scores["predictions"]) == 4
    with pytest.raises(ValueError, match="training budget"):
        S.TrainConfig()


def test_the_model_config_is_one_nested_field():
    """TrainConfig holds the model's shape as one Seq2SeqConfig; asdict nests it, from_dict reads
    it back, and also reads a results file recorded before the nesting (flat model fields)."""
    from dataclasses import asdict

    from dgmbook import recorded

    book = S.book_config()
    assert (book.model.init, book.model.dropout, book.model.vocab_size) == ("xavier", 0.0, 8000)
    assert asdict(book)["model"] == asdict(book.model)
    assert S.TrainConfig.from_dict(asdict(book)) == book
    flat = {k: v for k, v in asdict(book).items() if k != "model"} | asdict(book.model)
    assert S.TrainConfig.from_dict(flat) == book
    recorded_full = S.TrainConfig.from_dict(recorded.load_results("summarization-scratch")["config"])
    assert recorded_full == S.full_config()
    with pytest.raises(ValueError, match="model.max_len"):
        S.TrainConfig(max_steps=1, max_source_len=600)
    small = sd.train_tokenizer(["a b c"] * 3, vocab_size=300)  # too little text for 300 tokens
    shaped = S.model_config(book, small)  # the tokenizer's vocabulary, the configured shape
    assert (shaped.vocab_size, shaped.init, shaped.d_model) == (small.get_vocab_size(), "xavier", 256)
    assert small.get_vocab_size() < 300


def test_course_recipe_runs_on_tiny_stand_in_data(monkeypatch, bpe):
    """The course's XSum recipe (hub data and the t5-small tokenizer, not reachable in CI) goes
    through the same training code: here its loaders return 24 real XSum pairs and a small BPE
    tokenizer, and the model is shrunk; the recipe's own settings are checked as they are."""
    course = S.course_config()
    assert (course.data, course.tokenizer, course.epochs) == ("xsum-cs182", "t5-small", 5)
    model = course.model
    assert (model.d_model, model.n_heads, model.n_enc_layers, model.n_dec_layers, model.d_ff) == (
        512, 8, 6, 6, 2048)
    assert (S.course_decode().num_beams, S.course_decode().max_new_tokens) == (4, 20)
    pairs = sd.load_xsum_sample()[:24]
    asked = []
    monkeypatch.setattr(sd, "load_xsum_cs182", lambda split: asked.append(split) or pairs)
    monkeypatch.setattr(sd, "pretrained_tokenizer", lambda name: asked.append(name) or bpe)
    tiny = replace(course, model=replace(model, d_model=32, n_heads=2, n_enc_layers=1,
                                         n_dec_layers=1, d_ff=64, max_len=64),
                   max_source_len=64, max_target_len=16, epochs=None, max_steps=2,
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


def test_the_rouge_curve_is_taken_every_so_many_examples():
    """Before training, at every ``curve_every`` examples and at the end: the examples seen, the
    training seconds so far (evaluations not counted) and ROUGE on the first ``curve_rouge``
    validation dialogues."""
    from dgmbook.summarization import model as M
    from dgmbook.summarization import scratch

    cfg = scratch.TrainConfig(
        train_examples=48, val_examples=6, max_steps=5, batch_size=8, max_source_len=64,
        max_target_len=16, warmup_steps=1, curve_every=16, curve_rouge=3,
        model=M.Seq2SeqConfig(vocab_size=8000, d_model=32, n_heads=2, n_enc_layers=1,
                              n_dec_layers=1, d_ff=64, max_len=96))
    run = scratch.train(cfg)
    curve = run["rouge_curve"]
    assert curve["examples"] == [0, 16, 32, 40] and run["examples_seen"] == 40
    assert curve["seconds"][0] >= 0 and curve["seconds"] == sorted(curve["seconds"])
    assert all(0 <= v <= 100 for k in ("rouge1", "rouge2", "rougeL") for v in curve[k])
    with pytest.raises(ValueError, match="curve_every"):
        scratch.TrainConfig(max_steps=1, curve_rouge=3)
