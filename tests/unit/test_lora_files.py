"""LoRA and embedding files without a pipeline run: key layouts, A1111's update arithmetic, applying
and restoring bit for bit (offloaded weights too), tags, and embeddings in the token stream."""

import pickle
from types import SimpleNamespace

import pytest
import torch
from accelerate import cpu_offload
from safetensors.torch import save_file

from app.generation.extra_networks import LoraCall, prompt_networks, without_extra_networks
from app.generation.lora_patch import ActiveLora, loras_applied
from app.generation.prompts import encode_prompt, prompt_chunks
from app.generation.textual_inversion import EmbeddingLookup, PromptEmbedding
from app.models.demo import tiny_text_encoder
from app.models.embedding_files import embedding_from_data, read_embedding
from app.models.families import Family
from app.models.loader import tokenizer_for
from app.models.lora_files import Component, LayerKey, LoraLayer, lora_layers
from app.models.network_library import NetworkLibrary, addnet_sha256
from app.models.safe_weights import UnreadableWeights


def test_every_key_layout_names_the_same_layers():
    up, down, alpha = torch.zeros(8, 2), torch.zeros(2, 4), torch.tensor(1.0)
    parsed = lora_layers({
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": down,
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": up,
        "lora_unet_mid_block_attentions_0_proj_in.alpha": alpha,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": up,
        "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": down,
        "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": up,
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.down.weight": down,
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.up.weight": up,
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight": down,
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight": up,
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": down,
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": up,
        "lora_unet_conv_in.lora_down.weight": down,  # its up is missing: incomplete
        "something_else.weight": down,
    })
    assert set(parsed.layers) == {
        LayerKey(Component.UNET, "mid_block_attentions_0_proj_in", True),
        LayerKey(Component.TEXT_ENCODER, "text_model_encoder_layers_0_self_attn_q_proj", True),
        LayerKey(Component.UNET, "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", False),
        LayerKey(Component.TEXT_ENCODER, "text_model.encoder.layers.1.mlp.fc1", False),
        LayerKey(Component.UNET, "mid_block.attentions.0.transformer_blocks.0.attn1.to_q", False),
        LayerKey(Component.UNET, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0", False),
    }
    assert parsed.layers[LayerKey(Component.UNET, "mid_block_attentions_0_proj_in", True)].alpha == 1.0
    assert set(parsed.unknown) == {"something_else.weight", "conv_in"}


def test_the_update_is_a1111s_for_linear_conv_and_loha_layers():
    g = torch.Generator().manual_seed(0)
    up, down = torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g)
    linear = LoraLayer({"up": up, "down": down}, alpha=1.0)
    assert torch.allclose(linear.delta(torch.Size([6, 5])), up @ down / 2)
    assert linear.delta(torch.Size([6, 7])) is None  # another family's width
    assert linear.delta(torch.Size([6, 5, 1, 1])).shape == (6, 5, 1, 1)  # 1x1 conv, as SD 1.x proj_in

    # LoCon: a 3x3 down conv then a 1x1 up conv is the one conv with the merged kernel.
    conv_down, conv_up = torch.randn(2, 3, 3, 3, generator=g), torch.randn(4, 2, 1, 1, generator=g)
    delta = LoraLayer({"up": conv_up, "down": conv_down}).delta(torch.Size([4, 3, 3, 3]))
    x = torch.randn(1, 3, 8, 8, generator=g)
    two_convs = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, conv_down, padding=1), conv_up)
    assert torch.allclose(torch.nn.functional.conv2d(x, delta, padding=1), two_convs, atol=1e-5)

    inpaint = LoraLayer({"up": conv_up, "down": torch.randn(2, 4, 3, 3, generator=g)}).delta(torch.Size([4, 9, 3, 3]))
    assert inpaint.shape == (4, 9, 3, 3) and not inpaint[:, 4:].any() and inpaint[:, :4].any()

    w = {name: torch.randn(shape, generator=g) for name, shape in
         {"w1a": (6, 2), "w1b": (2, 5), "w2a": (6, 2), "w2b": (2, 5)}.items()}
    loha = LoraLayer(w, alpha=4.0).delta(torch.Size([6, 5]))
    assert torch.allclose(loha, (w["w1a"] @ w["w1b"]) * (w["w2a"] @ w["w2b"]) * 2)


class _Model(torch.nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.mid_block = torch.nn.Module()
        self.mid_block.proj = torch.nn.Linear(5, 6).to(dtype)
        self.conv = torch.nn.Conv2d(3, 4, 3).to(dtype)


def _pipe(dtype=torch.float32):
    torch.manual_seed(0)
    return SimpleNamespace(unet=_Model(dtype), text_encoder=None)


def _lora(in_features=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return lora_layers({
        "lora_unet_mid_block_proj.lora_down.weight": torch.randn(2, in_features, generator=g),
        "lora_unet_mid_block_proj.lora_up.weight": torch.randn(6, 2, generator=g),
        "lora_unet_conv.lora_down.weight": torch.randn(2, 3, 3, 3, generator=g),
        "lora_unet_conv.lora_up.weight": torch.randn(4, 2, 1, 1, generator=g),
    })


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_applied_for_the_block_then_restored_bit_for_bit(dtype):
    pipe = _pipe(dtype)
    before = {name: p.detach().clone() for name, p in pipe.unet.state_dict().items()}
    notes = []
    with loras_applied(pipe, [ActiveLora("a", _lora(), 0.5, 0.7)], "model", notes):
        changed = pipe.unet.mid_block.proj.weight.detach().clone()
        assert not torch.equal(changed, before["mid_block.proj.weight"])
        assert not torch.equal(pipe.unet.conv.weight, before["conv.weight"])
    assert notes == []
    expected = (before["mid_block.proj.weight"].float() + _lora().layers[
        LayerKey(Component.UNET, "mid_block_proj", True)].delta(torch.Size([6, 5])) * 0.7).to(dtype)
    assert torch.equal(changed, expected)
    for name, tensor in pipe.unet.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_weight_zero_and_a_misfit_change_nothing_and_a_misfit_says_so():
    pipe = _pipe()
    before = {name: p.detach().clone() for name, p in pipe.unet.state_dict().items()}
    notes = []
    with loras_applied(pipe, [ActiveLora("zero", _lora(), 0.0, 0.0), ActiveLora("wide", _lora(in_features=9), 1, 1)],
                       "tiny", notes):
        for name, tensor in pipe.unet.state_dict().items():
            assert torch.equal(tensor, before[name])
    assert len(notes) == 1 and "'wide' does not fit 'tiny'" in notes[0]


def test_an_offloaded_layer_is_patched_in_its_hook_and_restored():
    pipe = _pipe()
    before = pipe.unet.mid_block.proj.weight.detach().clone()
    cpu_offload(pipe.unet, execution_device="cpu")  # sequential offload: parameters wait on "meta"
    assert pipe.unet.mid_block.proj.weight.device.type == "meta"
    x = torch.randn(1, 5)
    plain = pipe.unet.mid_block.proj(x)
    with loras_applied(pipe, [ActiveLora("a", _lora(), 1, 1)], "model", []):
        assert not torch.equal(pipe.unet.mid_block.proj(x), plain)
    assert torch.equal(pipe.unet.mid_block.proj(x), plain)
    assert torch.equal(pipe.unet.mid_block.proj._hf_hook.weights_map["weight"], before)


def test_tags_are_read_as_a1111_reads_them_and_cut_from_clips_text():
    networks = prompt_networks("a fox <lora:one> <lora:two:0.5:0.25>, <lyco:three:te=0:unet=2>", "<lora:bad:x> <hypernet:h:1>")
    assert networks.loras == (LoraCall("one", 1.0, 1.0), LoraCall("two", 0.5, 0.25), LoraCall("three", 0.0, 2.0))
    assert len(networks.notes) == 2 and "<lora:bad:x>" in networks.notes[0] and "'hypernet'" in networks.notes[1]
    assert without_extra_networks("a fox <lora:one:1>, (red:1.2)") == "a fox , (red:1.2)"


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return tokenizer_for(Family.SD1), tiny_text_encoder()


def test_an_embedding_takes_its_vectors_place_in_the_token_stream(clip):
    tokenizer, encoder = clip
    table = encoder.get_input_embeddings().weight.detach()
    fox_ids = tokenizer("red fox", add_special_tokens=False).input_ids
    # An embedding whose two vectors are the tokens of "red fox" encodes exactly as those words.
    lookup = EmbeddingLookup(tokenizer, [PromptEmbedding("myfox", table[fox_ids].clone())])
    chunks, count = prompt_chunks(tokenizer, "a myfox, (myfox:1.2)", lookup)
    assert count == len(chunks[0].tokens) == 1 + 2 + 1 + 2
    assert [offset for offset, _ in chunks[0].fixes] == [1, 4] and chunks[0].weights[4:] == [1.2, 1.2]
    same = encode_prompt(tokenizer, encoder, "a myfox in snow", lookup=lookup)
    assert torch.allclose(same, encode_prompt(tokenizer, encoder, "a red fox in snow"), atol=1e-6)
    other = EmbeddingLookup(tokenizer, [PromptEmbedding("myfox", torch.randn(2, 32))])
    assert not torch.allclose(encode_prompt(tokenizer, encoder, "a myfox in snow", lookup=other), same)


def test_an_embedding_that_would_overflow_a_chunk_starts_the_next(clip):
    tokenizer, _ = clip
    lookup = EmbeddingLookup(tokenizer, [PromptEmbedding("myfox", torch.zeros(4, 32))])
    chunks, _ = prompt_chunks(tokenizer, "cat " * 73 + "myfox", lookup)
    assert len(chunks[0].tokens) == 73 and chunks[1].fixes[0][0] == 0 and len(chunks[1].tokens) == 4


class _Evil:
    def __reduce__(self):
        return eval, ("1/0",)


def test_embedding_files_in_every_format_and_bad_ones_with_a_reason(tmp_path):
    vectors = torch.randn(3, 32)
    a1111 = {"string_to_param": {"*": torch.nn.Parameter(vectors)}, "step": 7, "sd_checkpoint_name": "m"}
    torch.save(a1111, tmp_path / "a.pt")
    data = read_embedding(tmp_path / "a.pt")
    assert (data.count, data.width, data.step, data.sd_checkpoint_name) == (3, 32, 7, "m")
    assert torch.equal(data.vectors, vectors)
    save_file({"emb_params": vectors}, str(tmp_path / "b.safetensors"))
    assert read_embedding(tmp_path / "b.safetensors").count == 3
    assert embedding_from_data({"<concept>": torch.randn(768)}).count == 1  # diffusers concept, one vector
    for bad, reason in [({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}, "neither"),
                        ({"clip_g": torch.zeros(1, 1280), "clip_l": torch.zeros(1, 768)}, "SDXL"),
                        ({"string_to_param": {"*": torch.zeros(1, 3), "x": torch.zeros(1, 3)}}, "several")]:
        with pytest.raises(UnreadableWeights, match=reason):
            embedding_from_data(bad)
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(UnreadableWeights, match="run Python code"):
        read_embedding(tmp_path / "evil.pt")


def test_lora_hashes_and_metadata_as_a1111_computes_them(tmp_path):
    folder = tmp_path / "Lora"
    folder.mkdir()
    keys = {"lora_unet_x.lora_down.weight": torch.ones(1, 2), "lora_unet_x.lora_up.weight": torch.ones(2, 1)}
    save_file(keys, str(folder / "plain.safetensors"), metadata={"ss_network_args": '{"conv_dim": "4"}', "n": "{no"})
    save_file(keys, str(folder / "declared.safetensors"), metadata={"sshs_model_hash": "AB" * 32})
    save_file(keys, str(folder / "forged.safetensors"), metadata={"sshs_model_hash": "<img src=x onerror=alert(1)>"})
    library = NetworkLibrary(tmp_path)
    entries = {entry.name: entry for entry in library.refresh_loras()}
    assert entries["plain"].metadata == {"ss_network_args": {"conv_dim": "4"}, "n": "{no"}
    assert library.lora_hash(entries["plain"]) == addnet_sha256(folder / "plain.safetensors")[:12]
    assert library.lora_hash(entries["declared"]) == "ab" * 6
    assert library.lora_hash(entries["forged"]) == addnet_sha256(folder / "forged.safetensors")[:12]


def test_open_clip_names_with_fused_qkv_patch_the_same_weights_as_kohyas():
    g = torch.Generator().manual_seed(3)
    up, down, fc_up, fc_down = (torch.randn(96, 2, generator=g), torch.randn(2, 32, generator=g),
                                torch.randn(37, 2, generator=g), torch.randn(2, 32, generator=g))
    open_clip = lora_layers({
        "lora_te_model_transformer_resblocks_0_attn_in_proj.lora_up.weight": up,
        "lora_te_model_transformer_resblocks_0_attn_in_proj.lora_down.weight": down,
        "lora_te_model_transformer_resblocks_0_attn_in_proj.alpha": torch.tensor(1.0),
        "lora_te_model_transformer_resblocks_1_mlp_c_fc.lora_up.weight": fc_up,
        "lora_te_model_transformer_resblocks_1_mlp_c_fc.lora_down.weight": fc_down,
    })
    kohya_keys = {"lora_te_text_model_encoder_layers_1_mlp_fc1.lora_up.weight": fc_up,
                  "lora_te_text_model_encoder_layers_1_mlp_fc1.lora_down.weight": fc_down}
    for part, rows in zip(("q", "k", "v"), up.chunk(3)):
        prefix = f"lora_te_text_model_encoder_layers_0_self_attn_{part}_proj"
        kohya_keys |= {f"{prefix}.lora_up.weight": rows, f"{prefix}.lora_down.weight": down,
                       f"{prefix}.alpha": torch.tensor(1.0)}
    patched = []
    for parsed in (open_clip, lora_layers(kohya_keys)):
        torch.manual_seed(0)
        pipe = SimpleNamespace(unet=None, text_encoder=tiny_text_encoder("gelu"))
        notes = []
        with loras_applied(pipe, [ActiveLora("x", parsed, 1.0, 1.0)], "sd2", notes):
            patched.append({k: v.clone() for k, v in pipe.text_encoder.state_dict().items()})
        assert notes == []
    torch.manual_seed(0)
    untouched = tiny_text_encoder("gelu").state_dict()
    for layer in ("layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj", "layers.1.mlp.fc1"):
        key = f"encoder.{layer}.weight"
        assert not torch.equal(patched[0][key], untouched[key])
    assert patched[0].keys() == patched[1].keys()
    for key in patched[0]:
        assert torch.equal(patched[0][key], patched[1][key]), key


@pytest.mark.parametrize("config", ["sd15", "sd21"])
def test_ldm_names_of_the_real_unets_are_those_of_the_single_file_layout(config):
    from pathlib import Path

    from diffusers import UNet2DConditionModel

    from app.models.lora_files import ldm_unet_name
    from tools.ldm_convert import _unet_key, _unet_structure

    folder = Path(__file__).parents[2] / "configs" / "models" / config / "unet"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder))
    keys = list(unet.state_dict())
    per_block, up_attention = _unet_structure(keys)
    with_attention = {block for block, has in up_attention.items() if has}
    layers = [name for name, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(layers) > 200
    for name in layers:
        assert f"{ldm_unet_name(name, per_block, with_attention)}.weight" == _unet_key(f"{name}.weight", per_block,
                                                                                     up_attention), name


def test_a_lora_in_ldm_names_patches_the_same_layers_as_in_diffusers_names():
    from app.models.demo import tiny_unet

    g = torch.Generator().manual_seed(5)
    factors = {"down": torch.randn(2, 32, 3, 3, generator=g), "up": torch.randn(32, 2, 1, 1, generator=g),
               "qdown": torch.randn(2, 64, generator=g), "qup": torch.randn(64, 2, generator=g)}
    names = [("down_blocks_0_resnets_0_conv1", "input_blocks_1_0_in_layers_2", "down", "up"),
             ("up_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q",
              "output_blocks_1_1_transformer_blocks_0_attn1_to_q", "qdown", "qup")]
    patched = []
    for column in (0, 1):
        keys = {}
        for row in names:
            keys[f"lora_unet_{row[column]}.lora_down.weight"] = factors[row[2]]
            keys[f"lora_unet_{row[column]}.lora_up.weight"] = factors[row[3]]
        torch.manual_seed(0)
        pipe = SimpleNamespace(unet=tiny_unet(), text_encoder=None)
        notes = []
        with loras_applied(pipe, [ActiveLora("x", lora_layers(keys), 1, 1)], "tiny", notes):
            patched.append({k: v.clone() for k, v in pipe.unet.state_dict().items()})
        assert notes == []
    torch.manual_seed(0)
    untouched = tiny_unet().state_dict()
    changed = [k for k in untouched if not torch.equal(untouched[k], patched[0][k])]
    assert sorted(changed) == ["down_blocks.0.resnets.0.conv1.weight",
                               "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight"]
    assert all(torch.equal(patched[0][k], patched[1][k]) for k in untouched)


def test_only_the_last_few_parsed_loras_stay_in_memory(tmp_path):
    from app.models.network_library import PARSED_LORAS_KEPT

    (tmp_path / "Lora").mkdir()
    for index in range(PARSED_LORAS_KEPT + 2):
        tensors = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.randn(2, 8),
                   "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.randn(8, 2)}
        save_file(tensors, str(tmp_path / "Lora" / f"l{index}.safetensors"))
    library = NetworkLibrary(tmp_path)
    entries = library.refresh_loras()
    parsed = [library.lora_file(entry) for entry in entries]
    assert library.lora_file(entries[-1]) is parsed[-1]  # recent: kept
    assert library.lora_file(entries[0]) is not parsed[0]  # the oldest was let go, and is read again
    assert library.lora_file(entries[0]).layers.keys() == parsed[0].layers.keys()
