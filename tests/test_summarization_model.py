"""The hand-written encoder-decoder: layers against torch.nn's with copied weights, the KV cache
against teacher forcing, padding and the tied output projection."""

import pytest
import torch
import torch.nn as nn

from dgmbook.summarization.model import (
    DecoderLayer,
    EncoderLayer,
    MultiHeadAttention,
    Seq2SeqConfig,
    Seq2SeqTransformer,
    sinusoidal_positions,
)

D, H, FF = 32, 4, 64

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw) -> Seq2SeqConfig:
    base = dict(vocab_size=50, d_model=D, n_heads=H, n_enc_layers=2, n_dec_layers=2, d_ff=FF,
                max_len=40, dropout=0.0)
    return Seq2SeqConfig(**{**base, **kw})


def tiny_model(seed: int = 0, **kw) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    return Seq2SeqTransformer(tiny_config(**kw)).double().eval()


def padded_source(lengths, vocab=50, pad=0, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), pad, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(3, vocab, (n,), generator=g)
    return src


def copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    """nn.MultiheadAttention stacks the Q, K, V projections in ``in_proj_weight`` [3D, D]."""
    d = theirs.embed_dim
    with torch.no_grad():
        for lin, w, b in ((ours.q_proj, theirs.in_proj_weight[:d], theirs.in_proj_bias[:d]),
                          (ours.kv_proj, theirs.in_proj_weight[d:], theirs.in_proj_bias[d:]),
                          (ours.out_proj, theirs.out_proj.weight, theirs.out_proj.bias)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)


def copy_ff_and_norms(ours, theirs, n_norms: int) -> None:
    with torch.no_grad():
        for name in ("linear1", "linear2"):
            getattr(ours.ff, name).load_state_dict(getattr(theirs, name).state_dict())
        for i in range(1, n_norms + 1):
            getattr(ours, f"norm{i}").load_state_dict(getattr(theirs, f"norm{i}").state_dict())


def randomize(module: nn.Module, seed: int) -> None:
    """Non-trivial LayerNorm and bias values, so that copying them is tested too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(D, H, batch_first=True).double().eval()
    ours = MultiHeadAttention(D, H).double().eval()
    copy_attention(ours, theirs)
    x, mem = torch.randn(3, 7, D, dtype=torch.double), torch.randn(3, 9, D, dtype=torch.double)
    pad = torch.tensor([[False] * 9, [False] * 6 + [True] * 3, [False] * 2 + [True] * 7])  # True = pad
    # self-attention, causal
    causal = nn.Transformer.generate_square_subsequent_mask(7, dtype=torch.double)
    ref, _ = theirs(x, x, x, attn_mask=causal, need_weights=False)
    torch.testing.assert_close(ours(x, is_causal=True), ref)
    # cross-attention with key padding
    ref, _ = theirs(x, mem, mem, key_padding_mask=pad, need_weights=False)
    torch.testing.assert_close(ours(x, mem, mask=~pad[:, None, None, :]), ref)


def test_encoder_layer_matches_torch():
    cfg = tiny_config()
    theirs = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, activation="gelu", batch_first=True,
                                        norm_first=True).double().eval()
    randomize(theirs, 0)
    ours = EncoderLayer(cfg).double().eval()
    copy_attention(ours.self_attn, theirs.self_attn)
    copy_ff_and_norms(ours, theirs, 2)
    src = padded_source([6, 4, 2])
    x = torch.randn(3, 6, D, dtype=torch.double)
    with torch.no_grad():
        ref = theirs(x, src_key_padding_mask=src == 0)
        got = ours(x, (src != 0)[:, None, None, :])
    real = src != 0
    torch.testing.assert_close(got[real], ref[real])


def test_decoder_layer_matches_torch():
    cfg = tiny_config()
    theirs = nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, activation="gelu", batch_first=True,
                                        norm_first=True).double().eval()
    randomize(theirs, 1)
    ours = DecoderLayer(cfg).double().eval()
    copy_attention(ours.self_attn, theirs.self_attn)
    copy_attention(ours.cross_attn, theirs.multihead_attn)
    copy_ff_and_norms(ours, theirs, 3)
    src = padded_source([6, 4, 2])
    y, mem = torch.randn(3, 5, D, dtype=torch.double), torch.randn(3, 6, D, dtype=torch.double)
    causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.double)
    with torch.no_grad():
        ref = theirs(y, mem, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=src == 0)
        got = ours(y, ours.cross_attn.project_kv(mem), (src != 0)[:, None, None, :])
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_kv_cache_matches_teacher_forcing(positions):
    model = tiny_model(positions=positions)
    src = padded_source([9, 5, 2, 7])  # a batch with source padding
    tgt = torch.cat([torch.full((4, 1), 1), padded_source([12] * 4, seed=2)], dim=1)  # BOS + 12
    with torch.no_grad():
        full = model(src, tgt)  # [B, T, V] teacher forced
        memory, keep = model.encode(src)
        cache = model.init_cache(memory, keep, capacity=tgt.shape[1])
        # one token at a time, then a chunk of 4 after a cached prefix, then the rest
        steps = [model.decode_step(tgt[:, t : t + 1], cache) for t in range(6)]
        steps.append(model.decode_step(tgt[:, 6:10], cache))
        steps.append(model.decode_step(tgt[:, 10:], cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == tgt.shape[1]


def test_kv_cache_in_float32_is_close_to_teacher_forcing():
    model = tiny_model().float()
    src, tgt = padded_source([8, 3]), torch.cat([torch.full((2, 1), 1), padded_source([10, 10], seed=3)], 1)
    with torch.no_grad():
        full = model(src, tgt)
        cache = model.init_cache(*model.encode(src), capacity=tgt.shape[1])
        inc = torch.cat([model.decode_step(tgt[:, t : t + 1], cache) for t in range(tgt.shape[1])], 1)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)


def test_kv_cache_reorder_follows_the_rows():
    model = tiny_model()
    src = padded_source([5, 5, 5])[[0, 0, 0]]  # three beams of one source
    tgt = torch.cat([torch.full((3, 1), 1), padded_source([6] * 3, seed=4)], dim=1)
    with torch.no_grad():
        cache = model.init_cache(*model.encode(src), capacity=7)
        model.decode_step(tgt[:, :4], cache)
        order = torch.tensor([2, 2, 0])
        cache.reorder(order)
        new = tgt[order]
        got = model.decode_step(new[:, 4:5], cache)[:, 0]
        ref = model(src, new[:, :5])[:, -1]
    torch.testing.assert_close(got, ref)


def test_cache_overflow_and_long_inputs_raise():
    model = tiny_model()
    src = padded_source([3])
    with torch.no_grad():
        cache = model.init_cache(*model.encode(src), capacity=2)
        model.decode_step(torch.tensor([[1, 5]]), cache)
        with pytest.raises(ValueError, match="KV cache overflow"):
            model.decode_step(torch.tensor([[6]]), cache)
        with pytest.raises(ValueError, match="max_len"):
            model.encode(padded_source([41]))


def test_source_padding_does_not_change_the_output():
    model = tiny_model()
    src = padded_source([9, 4])
    tgt = torch.tensor([[1, 7, 8, 9]] * 2)
    with torch.no_grad():
        batched = model(src, tgt)[1]
        alone = model(src[1:, :4], tgt[1:])[0]
    torch.testing.assert_close(batched, alone)


def test_output_projection_is_tied_and_loss_ignores_padding():
    model = tiny_model()
    vocab_matrices = [p for p in model.parameters() if p.shape == (50, D)]
    assert len(vocab_matrices) == 1 and vocab_matrices[0] is model.tok_emb.weight
    src, tgt_in = padded_source([5, 3]), torch.tensor([[1, 4, 5, 6], [1, 7, 0, 0]])
    tgt_out = torch.tensor([[4, 5, 6, 2], [7, 2, 0, 0]])
    with torch.no_grad():
        logp = model(src, tgt_in).log_softmax(-1)
        real = tgt_out != 0
        expected = -logp.gather(2, tgt_out[:, :, None])[:, :, 0][real].mean()
        torch.testing.assert_close(model.loss(src, tgt_in, tgt_out), expected)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_embeddings_are_tokens_plus_positions(positions):
    """embed_source and embed_target: the token embedding plus the encoder's or the decoder's
    position rows (from ``offset`` on for the decoder), what the first layers receive."""
    model = tiny_model(positions=positions)
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    with torch.no_grad():
        tokens = model.tok_emb(ids)
        if positions == "learned":
            enc, dec = model.enc_pos.weight[:3], model.dec_pos.weight[4:7]
            assert not torch.equal(enc, model.dec_pos.weight[:3])  # two tables
        else:
            enc, dec = model.sinusoids[:3], model.sinusoids[4:7]
        torch.testing.assert_close(model.embed_source(ids), tokens + enc)
        torch.testing.assert_close(model.embed_target(ids, offset=4), tokens + dec)
        with pytest.raises(ValueError, match="max_len"):
            model.embed_target(ids, offset=38)


def test_sinusoidal_table_and_config_checks():
    P = sinusoidal_positions(5, 6)
    assert P.shape == (5, 6)
    assert torch.isclose(P[3, 2], torch.sin(torch.tensor(3 / 10000 ** (2 / 6))))
    assert torch.isclose(P[3, 5], torch.cos(torch.tensor(3 / 10000 ** (4 / 6))))
    with pytest.raises(ValueError, match="divisible"):
        Seq2SeqConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="positions"):
        Seq2SeqConfig(positions="rotary")


def test_initialisations():
    """``gpt2``: N(0, 0.02), residual projections scaled down; ``xavier``: Glorot-uniform matrices
    (bounded by sqrt(6 / (fan_in + fan_out))) and N(0, 1/d) embeddings; both zero biases."""
    cfg = dict(vocab_size=2000, d_model=64, n_heads=4, d_ff=256, max_len=64)
    torch.manual_seed(0)
    gpt2 = Seq2SeqTransformer(Seq2SeqConfig(**cfg))
    torch.manual_seed(0)
    xav = Seq2SeqTransformer(Seq2SeqConfig(**cfg, init="xavier"))
    layers = 2 * (3 + 3)  # 2 x (encoder + decoder layers)
    assert abs(gpt2.tok_emb.weight.std().item() - 0.02) < 0.002
    q = gpt2.decoder[0].cross_attn.q_proj.weight
    assert abs(q.std().item() - 0.02) < 0.002
    out = gpt2.decoder[0].ff.linear2.weight
    assert abs(out.std().item() - 0.02 / layers ** 0.5) < 0.001
    assert abs(xav.tok_emb.weight.std().item() - 64 ** -0.5) < 0.01
    for w in (xav.decoder[0].cross_attn.q_proj.weight, xav.encoder[1].ff.linear1.weight):
        bound = (6 / sum(w.shape)) ** 0.5
        assert w.abs().max().item() <= bound
        assert abs(w.std().item() - bound / 3 ** 0.5) < 0.1 * bound
    assert all(b.abs().max() == 0 for n, b in xav.named_parameters() if n.endswith("bias"))
    with pytest.raises(ValueError, match="init"):
        Seq2SeqConfig(init="kaiming")


def stepwise_logits(model, src, tgt, reorder=None) -> torch.Tensor:
    """Logits of ``tgt`` [B, T] fed one position at a time through the KV cache."""
    cache = model.init_cache(*model.encode(src), capacity=tgt.shape[1])
    out = []
    for t in range(tgt.shape[1]):
        if reorder is not None and t == 3:
            cache.reorder(reorder)
        out.append(model.decode_step(tgt[:, t : t + 1], cache))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_one_position_steps_match_the_layer_by_layer_path(positions):
    """Without autograd a one-position step runs the fused path (_decode_one: packed weights,
    batched-product attention); with autograd it runs DecoderLayer.forward with the cache. Same
    logits, same cache, also after a beam reorder."""
    model = tiny_model(positions=positions)
    src = padded_source([7, 7, 4])[[0, 0, 2]]  # rows 0 and 1: two beams of one source
    tgt = torch.cat([torch.full((3, 1), 1), padded_source([8] * 3, seed=5)], dim=1)
    order = torch.tensor([1, 1, 2])
    with torch.no_grad():
        fused = stepwise_logits(model, src, tgt, order)
    with torch.enable_grad():
        layered = stepwise_logits(model, src, tgt, order)
    torch.testing.assert_close(fused, layered.detach())
    with torch.no_grad():  # and both against teacher forcing of the reordered prefixes
        ref = model(src, torch.cat([tgt[order, :3], tgt[:, 3:]], dim=1))
    torch.testing.assert_close(fused[:, 3:], ref[:, 3:])


def test_decoding_weights_follow_parameter_changes():
    """Decoding reads copies of the weights laid out for it, kept between generations; they must
    follow every change of the parameters: an optimizer step, in-place edits, load_state_dict,
    a dtype conversion. The reference is teacher forcing with autograd on (nn.Linear's weights)."""
    model = tiny_model()
    src, tgt = padded_source([6, 3]), torch.cat([torch.full((2, 1), 1), padded_source([5, 5], seed=6)], 1)

    def check(m, atol=1e-10):
        with torch.inference_mode():
            got = stepwise_logits(m, src, tgt)
            no_cache = m.lm_head(m.decode(tgt, *m.encode(src)))
        with torch.enable_grad():
            ref = m(src, tgt).detach()
        torch.testing.assert_close(got, ref, atol=atol, rtol=0)
        torch.testing.assert_close(no_cache, ref, atol=atol, rtol=0)

    check(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    model.loss(src, tgt[:, :-1], tgt[:, 1:]).backward()
    opt.step()
    model.eval()
    check(model)
    with torch.no_grad():  # in place, in eval mode, with the copies already made
        model.decoder[0].ff.linear1.weight.mul_(2)
        model.decoder[1].self_attn.kv_proj.bias.add_(0.5)
        model.tok_emb.weight.add_(0.1)
    check(model)
    other = tiny_model(seed=3)
    model.load_state_dict(other.state_dict())
    check(model)
    check(model.float(), atol=1e-5)


def test_parameter_names_are_unchanged_and_the_copies_are_not_saved():
    """Checkpoints (results files, the run cache) store state dicts by parameter name: the
    decoding copies are no parameters or buffers, and pickling or copying the model drops them."""
    import copy
    import io

    model = tiny_model()
    with torch.inference_mode():
        stepwise_logits(model, padded_source([4]), torch.tensor([[1, 5, 6]]))
    assert set(model._packed_weights) == {"decoder", "E^T"}
    names = set(model.state_dict())
    for i in range(2):
        assert {f"decoder.{i}.self_attn.q_proj.weight", f"decoder.{i}.self_attn.kv_proj.weight",
                f"decoder.{i}.cross_attn.q_proj.bias", f"decoder.{i}.ff.linear1.weight"} <= names
    assert not any("pack" in n or "step" in n for n in names)
    assert len(names) == len(list(model.parameters()))  # learned positions: no buffers
    assert copy.deepcopy(model)._packed_weights == {}
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False)._packed_weights == {}
    model.train()
    assert model._packed_weights == {}


def test_bf16_autocast_decoding_matches_teacher_forcing():
    """Under bf16 autocast the packed weights are bf16 (converted once) and attention runs in
    scaled_dot_product_attention as in the layers: the same bf16 logits as teacher forcing."""
    from dgmbook.utils import autocast

    model = tiny_model().float()
    src, tgt = padded_source([7, 4]), torch.cat([torch.full((2, 1), 1), padded_source([6, 6], seed=7)], 1)
    with autocast(True), torch.inference_mode():
        got = stepwise_logits(model, src, tgt)
        ref = model(src, tgt)
    assert got.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=0)
    with torch.inference_mode():  # and in float32 again afterwards
        torch.testing.assert_close(stepwise_logits(model, src, tgt), model(src, tgt), atol=1e-5, rtol=0)


def test_one_position_step_beyond_max_len_raises():
    model = tiny_model()
    with torch.no_grad():
        cache = model.init_cache(*model.encode(padded_source([3])), capacity=45)
        model.decode_step(torch.ones(1, 40, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="max_len"):
            model.decode_step(torch.tensor([[5]]), cache)


def test_decoding_a_model_built_under_inference_mode():
    """Parameters created under torch.inference_mode have no version counter: decoding must
    still work (and load_state_dict still refresh the copies)."""
    src, tgt = padded_source([5, 2]), torch.cat([torch.full((2, 1), 1), padded_source([4, 4], seed=8)], 1)
    with torch.inference_mode():
        torch.manual_seed(0)
        model = Seq2SeqTransformer(tiny_config()).double().eval()
        torch.testing.assert_close(stepwise_logits(model, src, tgt), model.decode(tgt, *model.encode(src)) @
                                   model.tok_emb.weight.t())
        model.load_state_dict(tiny_model(seed=4).state_dict())
        torch.testing.assert_close(stepwise_logits(model, src, tgt), tiny_model(seed=4)(src, tgt))
