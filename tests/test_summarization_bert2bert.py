"""Fine-tuning pretrained encoder-decoders (dgmbook.summarization.bert2bert): BERT2BERT from the
MiniLM checkpoint, the T5 code path with a tiny random T5, optimizers and their state,
generation."""

from __future__ import annotations

import importlib.util
import io

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from dgmbook.summarization import bert2bert as P
from dgmbook.summarization.data import SPEAKER_TAGS, SummaryExample
from dgmbook.summarization.decoding import DecodeConfig

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec(P.MINILM_PACKAGE) is None,
    reason=f"the MiniLM checkpoint comes from the pip package {P.MINILM_PIN}, not installed",
)

EXAMPLES = [
    SummaryExample("a", "#Person1#: Where is the bank?\n#Person2#: Next to the station.",
                   ("#Person1# asks #Person2# where the bank is.",)),
    SummaryExample("b", "#Person1#: I lost my keys.\n#Person2#: Look in your bag.",
                   ("#Person1# lost the keys.", "#Person2# helps #Person1# find the keys.")),
    SummaryExample("c", "#Person1#: Do you like tea?\n#Person2#: No, I prefer coffee.",
                   ("#Person2# prefers coffee to tea.",)),
    SummaryExample("d", "#Person1#: The train is late again.\n#Person2#: Let us take a taxi.",
                   ("They take a taxi because the train is late.",)),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bert2bert():
    return P.build_bert2bert()


def tiny_t5() -> tuple[T5ForConditionalGeneration, PreTrainedTokenizerFast]:
    """A randomly initialized two-layer T5 and a word-level tokenizer that, like T5's, ends every
    input with ``</s>`` and has ``<pad>`` = 0 (the decoder's start token) and ``</s>`` = 1."""
    texts = [t.lower() for ex in EXAMPLES for t in (ex.document, *ex.references)] + [P.T5_PREFIX]
    pieces = pre_tokenizers.Whitespace()
    words = sorted({word for t in texts for word, _ in pieces.pre_tokenize_str(t)})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    return T5ForConditionalGeneration(config), tokenizer


def test_unloadable_model_says_why(tmp_path):
    with pytest.raises(OSError, match="bert2bert"):
        P.load_model(str(tmp_path))  # an empty folder: no config.json


@needs_minilm
def test_bert2bert_is_warm_started(bert2bert):
    model, tokenizer = bert2bert
    ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    assert P.special_token_ids(model) == ids
    assert model.generation_config.decoder_start_token_id == tokenizer.cls_token_id
    assert model.decoder.config.is_decoder and model.decoder.config.add_cross_attention
    # encoder and decoder start from the same checkpoint; the decoder's LM head is tied to its embeddings
    enc_q = model.encoder.encoder.layer[0].attention.self.query.weight
    dec_q = model.decoder.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(enc_q, dec_q)
    lm_head = model.decoder.cls.predictions.decoder.weight
    assert lm_head.data_ptr() == model.decoder.bert.embeddings.word_embeddings.weight.data_ptr()
    assert 48_000_000 < sum(p.numel() for p in model.parameters()) < 50_000_000


@needs_minilm
def test_speaker_tags_are_single_tokens_that_start_as_their_pieces(bert2bert):
    model, tokenizer = bert2bert
    plain_model, plain_tok = P.build_bert2bert(speaker_tags=False)
    text = "#Person1#: it's #Person2#'s turn."
    assert tokenizer.tokenize(text)[0] == "#Person1#"
    assert plain_tok.tokenize(text)[:4] == ["#", "person", "##1", "#"]
    assert len(tokenizer) == len(plain_tok) + len(SPEAKER_TAGS)
    # every other word is tokenized as before, and the tags come back from a decode
    assert tokenizer.tokenize("hello, mr. smith") == plain_tok.tokenize("hello, mr. smith")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert P.tidy(tokenizer.decode(ids)) == "#Person1# : it's #Person2#'s turn."
    # a tag's embedding row (encoder and decoder) is the mean of its pieces' rows
    pieces = plain_tok.convert_tokens_to_ids(["#", "person", "##2", "#"])
    tag = tokenizer.convert_tokens_to_ids("#Person2#")
    for half, plain_half in ((model.encoder, plain_model.encoder), (model.decoder, plain_model.decoder)):
        table, plain_table = half.get_input_embeddings().weight, plain_half.get_input_embeddings().weight
        assert table.shape[0] == len(tokenizer)
        torch.testing.assert_close(table[tag], plain_table[pieces].mean(0))
    # the decoder's output layer is still its word embeddings, now with the tags
    assert model.decoder.get_output_embeddings().weight is model.decoder.get_input_embeddings().weight
    assert model.decoder.cls.predictions.bias.shape == (len(tokenizer),)


@needs_minilm
def test_init_cross_attention_redraws_only_cross_attention_matrices():
    torch.manual_seed(0)
    model, _ = P.build_bert2bert(speaker_tags=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert P.init_cross_attention(model) == 4 * model.config.decoder.num_hidden_layers  # q, k, v, out
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("crossattention" in k and k.endswith("weight") for k in changed)
    assert all(before[k].ndim == 2 for k in changed)
    w = model.decoder.bert.encoder.layer[0].crossattention.self.query.weight  # 384 x 384
    assert abs(w.std().item() - (2 / (2 * 384)) ** 0.5) < 0.002  # Glorot: 0.051, not 0.02
    assert abs(before["decoder.bert.encoder.layer.0.crossattention.self.query.weight"].std().item() - 0.02) < 0.002
    with pytest.raises(ValueError, match="cross_init"):
        P.FinetuneConfig(cross_init="zeros")


@needs_minilm
def test_new_parameters_are_cross_attention_and_lm_head_transform(bert2bert):
    model, _ = bert2bert
    new = P.new_parameters(model)
    # per decoder layer: query, key, value, output (weights and biases) and a LayerNorm; the LM head's
    # transform (dense and LayerNorm) and output bias
    assert len(new) == 6 * 10 + 5
    assert all(n.startswith("decoder.") for n in new) and not P.new_parameters(tiny_t5()[0])
    params = dict(model.named_parameters())
    assert 3_500_000 < sum(params[n].numel() for n in new) < 4_000_000


@needs_minilm
def test_encode_and_collate(bert2bert):
    model, tokenizer = bert2bert
    start, eos, pad = P.special_token_ids(model)
    data = P.encode(tokenizer, EXAMPLES, eos, max_source_len=12, max_target_len=5)
    assert all(len(s) <= 12 and s[0] == tokenizer.cls_token_id and s[-1] == tokenizer.sep_token_id
               for s in data.sources)
    assert all(len(t) <= 5 and t[-1] == eos and start not in t for t in data.targets)
    batch = P.collate(data, [0, 2], start, pad)
    assert batch["decoder_input_ids"][:, 0].eq(start).all()
    targets = [data.targets[0], data.targets[2]]
    for row, t in enumerate(targets):
        assert batch["labels"][row, : len(t)].tolist() == t
        assert batch["labels"][row, len(t):].eq(P.IGNORE_INDEX).all()
        assert batch["decoder_input_ids"][row, 1: len(t)].tolist() == t[:-1]
        assert batch["attention_mask"][row].sum() == len(data.sources[[0, 2][row]])


@needs_minilm
def test_training_steps_lower_the_loss(bert2bert):
    model, tokenizer = bert2bert
    start, eos, pad = P.special_token_ids(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = P.collate(P.encode(tokenizer, EXAMPLES, eos), range(len(EXAMPLES)), start, pad)
    optimizer = P.make_optimizer(model, P.book_config(lr=1e-4))
    model.train()
    losses = []
    for _ in range(4):
        with P.autocast(True):
            loss = P.sequence_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.load_state_dict(state)
    assert losses[-1] < losses[0] - 0.5, losses


@needs_minilm
def test_summarize_returns_strings_in_order(bert2bert):
    model, tokenizer = bert2bert
    model.train()  # summarize decodes without dropout and gives the mode back
    docs = [ex.document for ex in EXAMPLES]
    greedy = P.summarize(model, tokenizer, docs, DecodeConfig(max_new_tokens=4), batch_size=3)
    beam = P.summarize(model, tokenizer, docs, DecodeConfig(num_beams=2, max_new_tokens=4), batch_size=3)
    assert len(greedy) == len(beam) == len(docs)
    assert all(isinstance(s, str) for s in greedy + beam)
    # one batch either way: the outputs follow the documents' order
    forward = P.summarize(model, tokenizer, docs, DecodeConfig(max_new_tokens=4))
    assert P.summarize(model, tokenizer, docs[::-1], DecodeConfig(max_new_tokens=4)) == forward[::-1]
    assert model.training


@needs_minilm
def test_bert2bert_result_saves_and_reloads(bert2bert):
    model, tokenizer = bert2bert
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = P.book_config(max_examples=2, batch_size=2, n_val=2, eval_every=2, curve_rouge=0,
                        bf16=False, freeze_encoder=False)
    result = P.train(cfg, model, tokenizer, train_examples=EXAMPLES[:2], val_examples=EXAMPLES[2:])
    buffer = io.BytesIO()
    torch.save(result, buffer)
    buffer.seek(0)
    reloaded, _ = P.load_trained(torch.load(buffer, weights_only=False))
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())
    query = "decoder.bert.encoder.layer.0.crossattention.self.query.weight"
    assert not torch.equal(state[query], result["state_dict"][query])
    weights = result["state_dict"]  # tied weights stay tied: stored once
    tied = ("decoder.cls.predictions.decoder.weight", "decoder.bert.embeddings.word_embeddings.weight")
    assert weights[tied[0]].data_ptr() == weights[tied[1]].data_ptr()
    model.load_state_dict(state)
    assert result["examples_seen"] == 2 and result["steps"] == 1
    assert result["curves"]["examples"] == [0, 2]
    # AdamW: two fp32 moments per parameter that gets a gradient (all but the unused encoder pooler)
    pooler = sum(p.numel() for p in model.encoder.pooler.parameters())
    n = result["num_parameters"]
    assert 8 * (n - pooler) <= result["optimizer_state_bytes"] < 8 * n


def test_frozen_encoder_stays_as_pretrained(bert2bert):
    """freeze_encoder (the book run): the encoder's weights are unchanged, it holds no optimizer
    state, and the decoder trains."""
    model, tokenizer = bert2bert
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = P.book_config(max_examples=2, batch_size=2, n_val=2, eval_every=2, curve_rouge=0,
                        bf16=False)
    assert cfg.freeze_encoder
    try:
        result = P.train(cfg, model, tokenizer, train_examples=EXAMPLES[:2],
                         val_examples=EXAMPLES[2:])
    finally:
        trained = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        model.requires_grad_(True)
    changed = {k for k in state if not torch.equal(state[k], trained[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)
    encoder = sum(p.numel() for p in model.encoder.parameters())
    decoder = sum(p.numel() for p in model.decoder.parameters())
    # AdamW's two fp32 moments for the decoder's parameters only
    assert 8 * decoder <= result["optimizer_state_bytes"] < 8 * decoder + 8 * encoder // 100


def test_t5_code_path_end_to_end():
    model, tokenizer = tiny_t5()
    cfg = P.book_config("t5-small", max_examples=8, batch_size=4, eval_every=4, n_val=2, curve_rouge=2,
                        optimizer="adafactor", lr=1e-2, keep_weights=False)
    assert cfg.source_prefix == P.T5_PREFIX
    result = P.train(cfg, model, tokenizer, train_examples=EXAMPLES, val_examples=EXAMPLES[:2])
    curve = result["curves"]
    assert curve["examples"] == [0, 4, 8] and result["steps"] == 2
    assert curve["train_loss"][0] is None and curve["val_loss"][-1] < curve["val_loss"][0]
    assert all(0 <= r <= 100 for r in curve["rouge1"])
    torch.save(result, io.BytesIO())  # storable by the run cache
    sources = P.encode_sources(tokenizer, ["Do you like tea?"], 64, cfg.source_prefix)
    tokens = ["summarize", ":", "do", "you", "like", "tea", "?", "</s>"]
    assert tokenizer.convert_ids_to_tokens(sources[0]) == tokens
    scores = P.evaluate(model, tokenizer, EXAMPLES, DecodeConfig(num_beams=2, max_new_tokens=6),
                        prefix=cfg.source_prefix)
    assert len(scores["predictions"]) == len(EXAMPLES) and scores["mean_words"] <= 6
    assert scores["rouge_max"]["rouge1"] >= scores["rouge_first"]["rouge1"]


def test_adafactor_is_the_t5_fine_tuning_setting():
    cfg = P.adafactor_config()
    assert (cfg.optimizer, cfg.lr) == ("adafactor", 1e-3)
    optimizer = P.make_optimizer(torch.nn.Linear(3, 2), cfg)
    assert isinstance(optimizer, P.Adafactor)
    d = optimizer.defaults
    settings = (d["lr"], d["scale_parameter"], d["relative_step"], d["warmup_init"], d["beta1"])
    assert settings == (1e-3, False, False, False, None)
    assert all(P.lr_factor(cfg, done) == 1.0 for done in (0.0, 0.5, 1.0))


def test_adamw_schedule_warms_up_and_decays():
    cfg = P.book_config(warmup=0.1)
    assert P.lr_factor(cfg, 0.0) == 0.0 and P.lr_factor(cfg, 0.05) == pytest.approx(0.5)
    assert P.lr_factor(cfg, 0.1) == pytest.approx(1.0) and P.lr_factor(cfg, 0.55) == pytest.approx(0.5)
    assert P.lr_factor(cfg, 1.0) == 0.0


def test_optimizer_state_bytes_on_a_toy_model():
    layer = torch.nn.Linear(10, 20)  # weight 20 x 10, bias 20
    adamw = P.make_optimizer(layer, P.book_config())
    adafactor = P.make_optimizer(layer, P.adafactor_config())
    for optimizer in (adamw, adafactor):
        assert P.optimizer_state_bytes(optimizer) == 0  # no state before the first step
        layer(torch.randn(3, 10)).sum().backward()
        optimizer.step()
    fp32 = 4
    # AdamW: exp_avg and exp_avg_sq like every parameter, plus a scalar step tensor per parameter
    assert P.optimizer_state_bytes(adamw) == fp32 * (2 * (200 + 20) + 2)
    # Adafactor (no first moment): row and column statistics for the matrix, a full second moment
    # for the vector, plus a scalar RMS per parameter
    assert P.optimizer_state_bytes(adafactor) == fp32 * ((20 + 10) + 20 + 2)


def test_config_checks():
    with pytest.raises(ValueError, match="optimizer"):
        P.FinetuneConfig(optimizer="sgd")
    with pytest.raises(ValueError, match=">= 1"):
        P.FinetuneConfig(max_examples=0)
    assert P.full_config().max_examples > P.book_config().max_examples
