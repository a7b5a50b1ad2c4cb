"""Tiny, randomly initialised but *real* diffusers pipelines for the four supported model families.

Everything here is built in code (no downloads, nothing cached on disk) and is deterministic from a seed.
The pipelines are the genuine diffusers classes (``HunyuanVideoPipeline``, ``FluxPipeline``,
``CosmosTextToWorldPipeline``, ``WanPipeline``) with tiny transformers, tiny VAEs, tiny text encoders and
tokenizers trained in code over a small vocabulary, and the scheduler each real model ships with. They run
end to end on a CPU in well under a second (single-threaded: ``torch.set_num_threads(1)`` is fastest for models
this small) and survive ``save_pretrained`` / ``from_pretrained``.

Their weights are random: outputs are noise-like pictures, useful only to exercise code paths (the CLI's
embedded default, the patch-layer tests). Every tiny pipeline is marked: ``pipe.na_accel_tiny == family`` and
``pipe.transformer.config["_na_accel_tiny"] == family`` (the latter survives a save/load round trip); use
:func:`tiny_family` to ask whether a pipeline is one of these, and label its outputs
"tiny random-weight model".

Model layout (shared by all families unless noted): 2 attention heads x head dim 16, hidden size 32,
2 blocks of each kind, 16 latent channels, VAE compression 8x spatial (4x temporal; Cosmos 8x), transformer
patch (1, 2, 2). ``default_generation_kwargs(family)`` gives a (3, 4, 6) latent token grid for the video
families and (6, 8) for Flux, with 32 text tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# diffusers resolves how to load a saved component by looking its base classes up by name in the module that
# defines it (``model_index.json`` names ``na_accel.tiny`` for TinySafetyChecker): ModelMixin must be a name here.
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

from ..patching.families import FAMILIES as _ADAPTERS

__all__ = [
    "FAMILIES",
    "TINY_DEFAULT",
    "TINY_LABEL",
    "TinySafetyChecker",
    "default_generation_kwargs",
    "tiny_family",
    "tiny_pipeline",
    "tiny_transformer",
]

FAMILIES: tuple[str, ...] = tuple(_ADAPTERS)
TINY_DEFAULT = "hunyuan"
TINY_LABEL = "tiny random-weight model"

_HEADS = 2
_HEAD_DIM = 16
_TEXT_DIM = 32  # hidden size of every tiny text encoder
_LATENT_CHANNELS = 16
_TEXT_TOKENS = 32  # max_sequence_length used by default_generation_kwargs

# Seed offsets per component, so that the components do not depend on construction order.
_SEED_TRANSFORMER = 0
_SEED_VAE = 1
_SEED_TEXT = 2
_SEED_TEXT_2 = 3


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {', '.join(FAMILIES)}")
    return family


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block and restore the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _randomize_zero_params(module: torch.nn.Module, std: float = 0.02) -> None:
    """Give parameters that a model initialises to exactly zero (output projections, adaLN modulation,
    learnable position embeddings) small random values, so that every attention layer visibly affects the
    output of the tiny model. Biases and norm weights are left alone."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2 and torch.count_nonzero(p) == 0:
                p.normal_(0.0, std)


# ----------------------------------------------------------------------------------------------------------
# Transformers
# ----------------------------------------------------------------------------------------------------------


def _transformer_config(family: str) -> dict[str, Any]:
    if family == "hunyuan":
        return dict(
            in_channels=_LATENT_CHANNELS,
            out_channels=_LATENT_CHANNELS,
            num_attention_heads=_HEADS,
            attention_head_dim=_HEAD_DIM,
            num_layers=2,
            num_single_layers=2,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            patch_size=2,
            patch_size_t=1,
            qk_norm="rms_norm",
            guidance_embeds=True,
            text_embed_dim=_TEXT_DIM,
            pooled_projection_dim=_TEXT_DIM,
            rope_axes_dim=(4, 6, 6),
        )
    if family == "flux":
        return dict(
            patch_size=1,
            in_channels=_LATENT_CHANNELS * 4,  # latents are packed 2x2
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=_HEAD_DIM,
            num_attention_heads=_HEADS,
            joint_attention_dim=_TEXT_DIM,
            pooled_projection_dim=_TEXT_DIM,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )
    if family == "cosmos":
        return dict(
            in_channels=_LATENT_CHANNELS,
            out_channels=_LATENT_CHANNELS,
            num_attention_heads=_HEADS,
            attention_head_dim=_HEAD_DIM,
            num_layers=2,
            mlp_ratio=2.0,
            text_embed_dim=_TEXT_DIM,
            adaln_lora_dim=8,
            max_size=(128, 240, 240),
            patch_size=(1, 2, 2),
            rope_scale=(2.0, 1.0, 1.0),
            concat_padding_mask=False,  # True needs torchvision
            extra_pos_embed_type="learnable",
        )
    if family == "wan":
        return dict(
            patch_size=(1, 2, 2),
            num_attention_heads=_HEADS,
            attention_head_dim=_HEAD_DIM,
            in_channels=_LATENT_CHANNELS,
            out_channels=_LATENT_CHANNELS,
            text_dim=_TEXT_DIM,
            freq_dim=32,
            ffn_dim=64,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=1024,
        )
    raise AssertionError(family)


def _transformer_class(family: str):
    return _ADAPTERS[family].model_type()


def tiny_transformer(family: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """Build a tiny random-weight diffusers transformer of ``family``.

    Args:
        family: one of :data:`FAMILIES` (``"hunyuan"``, ``"flux"``, ``"cosmos"``, ``"wan"``).
        seed: weights are a deterministic function of the seed (the global RNG is left untouched).
        **overrides: constructor arguments that replace the tiny defaults, e.g. ``num_layers=1``.

    Returns:
        ``HunyuanVideoTransformer3DModel`` / ``FluxTransformer2DModel`` / ``CosmosTransformer3DModel`` /
        ``WanTransformer3DModel`` in eval mode, float32, with 2 heads x head dim 16 (unless overridden).
        Parameters the model initialises to zero are given small random values, so every attention layer
        influences the output. ``model.config["_na_accel_tiny"] == family``.
    """
    _check_family(family)
    config = _transformer_config(family)
    config.update(overrides)
    with _seeded(seed * 1000 + _SEED_TRANSFORMER):
        model = _transformer_class(family)(**config)
        _randomize_zero_params(model)
    model.register_to_config(_na_accel_tiny=family)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# Tokenizers (trained in code over a small vocabulary; deterministic)
# ----------------------------------------------------------------------------------------------------------

_WORDS = """
a an the one two three some many this that these those it its is are was be being has have with without
and or but of in on at by to from for into onto over under above below near behind between through across
up down out off while as very slowly quickly gently softly bright dark light shadow sun sunset sunrise sky
cloud clouds rain snow wind fog night day morning evening water sea ocean river lake wave waves beach sand
forest tree trees leaf leaves flower flowers grass field mountain mountains hill rock stone road street city
town house room window door wall floor table chair car train boat ship plane bird birds fish cat cats dog
dogs horse cow fox bear lion tiger monkey rabbit man woman person people child children girl boy face hand
hands eyes hair smile walks walking runs running jumps jumping flies flying swims swimming dances dancing
sits sitting stands standing looks looking plays playing eats eating drinks holding rides riding moves
moving turns falls camera shot close closeup wide view aerial slow motion pan zoom tracking cinematic
realistic photo photograph painting drawing illustration style detailed high quality resolution sharp
blurry soft warm cold red orange yellow green blue purple pink white black gray grey brown golden silver
colorful big small large tiny old young new beautiful happy sad calm busy empty
astronaut robot dragon castle garden kitchen park snowy rainy foggy sunny misty neon futuristic vintage
portrait landscape scene video image frame background foreground lighting atmosphere texture color
bad low worst blurred distorted ugly watermark text
"""

_SYMBOLS = list(".,:;!?'\"-()0123456789")

_LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# The Llama-3 pre-tokenizer pattern (what HunyuanVideo's text encoder uses).
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _words() -> list[str]:
    return _WORDS.split()


def _corpus_lines(words: list[str]) -> list[str]:
    """Training text: every vocabulary word (bare, capitalised, after a space) and HunyuanVideo's prompt
    template with its special tokens removed, so the template tokenizes to whole words."""
    import re

    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    template = DEFAULT_PROMPT_TEMPLATE["template"]
    pieces = re.split("|".join(re.escape(s) for s in _LLAMA_SPECIALS) + r"|\{\}", template)
    lines = [p for p in pieces if p]
    lines += [" ".join(words), " ".join(w.capitalize() for w in words), "".join(words[:1]) + " " + " ".join(_SYMBOLS)]
    lines += words
    return lines


def _llama3_pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )


def _train_bpe(
    specials: list[str], pre_tokenizer, lowercase: bool = False, end_of_word_suffix: str = "",
    vocabulary: list[str] | None = None,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE over :func:`_corpus_lines` until every word is a single token.

    A small deterministic trainer (ties go to the lexicographically smallest pair; the ``tokenizers``
    trainer breaks ties in hash-map order, so its merges change between processes). Returns
    (vocab, merges) with ids in a fixed order: specials, byte alphabet, byte + suffix, merged tokens."""
    import heapq
    from collections import Counter, defaultdict

    from tokenizers import pre_tokenizers

    words: Counter[str] = Counter()
    for line in _corpus_lines(vocabulary or _words()):
        text = line.lower() if lowercase else line
        words.update(chunk for chunk, _ in pre_tokenizer.pre_tokenize_str(text))
    keys = sorted(words)
    counts = [words[k] for k in keys]
    seqs: list[list[str]] = []
    for k in keys:
        sym = list(k)
        if end_of_word_suffix:
            sym[-1] += end_of_word_suffix
        seqs.append(sym)

    pair_count: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, sym in enumerate(seqs):
        for pair in zip(sym, sym[1:], strict=False):
            pair_count[pair] += counts[i]
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or neg == 0:
            continue  # stale entry
        merges.append(pair)
        merged = pair[0] + pair[1]
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            sym = seqs[i]
            for old in zip(sym, sym[1:], strict=False):
                pair_count[old] -= counts[i]
                touched.add(old)
            out, j = [], 0
            while j < len(sym):
                if j + 1 < len(sym) and sym[j] == pair[0] and sym[j + 1] == pair[1]:
                    out.append(merged)
                    j += 2
                else:
                    out.append(sym[j])
                    j += 1
            seqs[i] = out
            for new in zip(out, out[1:], strict=False):
                pair_count[new] += counts[i]
                where[new].add(i)
                touched.add(new)
        pair_count.pop(pair, None)
        for t in sorted(touched):
            if pair_count.get(t, 0) > 0:
                heapq.heappush(heap, (-pair_count[t], t))

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    ordered = list(specials) + alphabet
    if end_of_word_suffix:
        ordered += [ch + end_of_word_suffix for ch in alphabet]
    ordered += [a + b for a, b in merges]
    vocab: dict[str, int] = {}
    for piece in ordered:
        vocab.setdefault(piece, len(vocab))
    return vocab, merges


def _llama_tokenizer(words: list[str] | None = None):
    """A Llama-3-style byte-level BPE tokenizer (``PreTrainedTokenizerFast``, as HunyuanVideo's real one).

    HunyuanVideo's prompt template is a whole-word vocabulary here, so its system prefix tokenizes to exactly
    ``DEFAULT_PROMPT_TEMPLATE["crop_start"]`` (95) tokens, as with the real tokenizer; unknown words fall back
    to byte tokens."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _train_bpe(_LLAMA_SPECIALS, pre_tokenizer=_llama3_pre_tokenizer(), vocabulary=words)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = _llama3_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(_LLAMA_SPECIALS))
    bos = _LLAMA_SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        additional_special_tokens=_LLAMA_SPECIALS[2:],
        padding_side="right",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def _clip_tokenizer(words: list[str] | None = None):
    """A ``CLIPTokenizer`` (byte-level BPE with ``</w>`` word ends) trained over the tiny vocabulary."""
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    pre_tokenizer = CLIPTokenizer().backend_tokenizer.pre_tokenizer
    vocab, merges = _train_bpe(specials, pre_tokenizer=pre_tokenizer, lowercase=True, end_of_word_suffix="</w>",
                               vocabulary=words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _t5_tokenizer():
    """A ``T5Tokenizer`` (SentencePiece-style unigram) over the tiny vocabulary: whole words score higher than
    characters, unknown characters map to ``<unk>``."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    seen = {p for p, _ in pieces}
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") | set(_SYMBOLS))
    for c in chars:
        for piece in (c, "\u2581" + c):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -10.0))
    for w in _words():
        for piece in ("\u2581" + w, "\u2581" + w.capitalize(), w):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -2.0 - 0.001 * len(pieces)))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


# ----------------------------------------------------------------------------------------------------------
# Text encoders
# ----------------------------------------------------------------------------------------------------------


def _llama_encoder(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=3,  # HunyuanVideo reads hidden_states[-3]
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed):
        return LlamaModel(config).eval()


def _clip_encoder(tokenizer, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_DIM,
        intermediate_size=64,
        projection_dim=_TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed):
        return CLIPTextModel(config).eval()


def _t5_encoder(tokenizer, seed: int, umt5: bool = False):
    if umt5:
        from transformers import UMT5Config as Config
        from transformers import UMT5EncoderModel as Model
    else:
        from transformers import T5Config as Config
        from transformers import T5EncoderModel as Model

    config = Config(
        vocab_size=len(tokenizer),
        d_model=_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed):
        return Model(config).eval()


# ----------------------------------------------------------------------------------------------------------
# VAEs and schedulers
# ----------------------------------------------------------------------------------------------------------


def _vae(family: str, seed: int):
    import diffusers

    with _seeded(seed):
        if family == "hunyuan":
            vae = diffusers.AutoencoderKLHunyuanVideo(
                latent_channels=_LATENT_CHANNELS,
                block_out_channels=(8, 8, 8, 8),
                layers_per_block=1,
                norm_num_groups=4,
                spatial_compression_ratio=8,
                temporal_compression_ratio=4,
                mid_block_add_attention=True,
            )
        elif family == "flux":
            vae = diffusers.AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(8, 8, 8, 8),
                layers_per_block=1,
                latent_channels=_LATENT_CHANNELS,
                norm_num_groups=4,
                sample_size=64,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.1159,
                scaling_factor=0.3611,
            )
        elif family == "cosmos":
            vae = diffusers.AutoencoderKLCosmos(
                latent_channels=_LATENT_CHANNELS,
                encoder_block_out_channels=(8, 8, 8, 8),
                decode_block_out_channels=(8, 8, 8, 8),
                attention_resolutions=(8,),
                resolution=64,
                num_layers=1,
                patch_size=4,
                patch_type="haar",
                spatial_compression_ratio=8,
                temporal_compression_ratio=8,
            )
        elif family == "wan":
            vae = diffusers.AutoencoderKLWan(
                base_dim=8,
                z_dim=_LATENT_CHANNELS,
                dim_mult=[1, 1, 1, 1],
                num_res_blocks=1,
                temperal_downsample=[False, True, True],
            )
        else:
            raise AssertionError(family)
    return vae.eval()


def _scheduler(family: str):
    import diffusers

    if family == "hunyuan":
        return diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0)
    if family == "flux":  # FLUX.1-dev's scheduler config
        return diffusers.FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    if family == "cosmos":  # Cosmos-1.0-Diffusion's scheduler config
        return diffusers.EDMEulerScheduler(
            sigma_min=0.002,
            sigma_max=80.0,
            sigma_data=0.5,
            sigma_schedule="karras",
            num_train_timesteps=1000,
            prediction_type="epsilon",
            rho=7.0,
            final_sigmas_type="sigma_min",
        )
    if family == "wan":  # Wan2.1's scheduler config
        return diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=1000,
            flow_shift=3.0,
        )
    raise AssertionError(family)


# ----------------------------------------------------------------------------------------------------------
# Cosmos guardrail replacement
# ----------------------------------------------------------------------------------------------------------


class TinySafetyChecker(ModelMixin, ConfigMixin):
    """Pass-through stand-in for the Cosmos guardrail, for the tiny random-weight Cosmos pipeline only.

    The real ``CosmosSafetyChecker`` needs the ``cosmos_guardrail`` package and large models; a tiny
    random-weight pipeline generates noise, so it gets this no-op checker. It saves and loads with the
    pipeline (``model_index.json`` names this module; diffusers loads it only from an imported module, so
    ``na-accel``'s loader imports the ``na_accel`` modules a ``model_index.json`` names before loading)."""

    config_name = "config.json"

    def __init__(self) -> None:
        super().__init__()
        # persistent, so save_pretrained writes a weights file that from_pretrained can find
        self.register_buffer("_device_tracker", torch.zeros(1, dtype=torch.float32), persistent=True)

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames):
        return frames

    @property
    def device(self) -> torch.device:
        return self._device_tracker.device

    @property
    def dtype(self) -> torch.dtype:
        return self._device_tracker.dtype


# ----------------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------------


def tiny_pipeline(family: str = "hunyuan", seed: int = 0, dtype: torch.dtype = torch.float32):
    """Build a tiny random-weight diffusers pipeline of ``family``, entirely in code.

    ====== ============================ ============================================ ==========================
    family pipeline class               text encoders (tokenizers)                   scheduler
    ====== ============================ ============================================ ==========================
    hunyuan HunyuanVideoPipeline        LlamaModel (PreTrainedTokenizerFast, Llama-3  FlowMatchEulerDiscrete
                                        style) + CLIPTextModel (CLIPTokenizer)        (shift 7)
    flux   FluxPipeline                 CLIPTextModel (CLIPTokenizer) +               FlowMatchEulerDiscrete
                                        T5EncoderModel (T5Tokenizer)                  (dynamic shifting)
    cosmos CosmosTextToWorldPipeline    T5EncoderModel (T5Tokenizer); guardrail       EDMEuler
                                        replaced by :class:`TinySafetyChecker`
    wan    WanPipeline                  UMT5EncoderModel (T5Tokenizer)                UniPCMultistep (flow)
    ====== ============================ ============================================ ==========================

    Args:
        family: one of :data:`FAMILIES`.
        seed: all weights are a deterministic function of the seed; the global RNG is left untouched.
        dtype: dtype of all model weights (built in float32, then cast).

    Returns:
        The pipeline on the CPU with the progress bar disabled, marked ``pipe.na_accel_tiny = family`` (and
        ``pipe.transformer.config["_na_accel_tiny"]``, which survives save/load). Run it with
        ``pipe(prompt, **default_generation_kwargs(family))``.
    """
    import diffusers

    _check_family(family)
    base = seed * 1000
    transformer = tiny_transformer(family, seed=seed)
    vae = _vae(family, base + _SEED_VAE)
    scheduler = _scheduler(family)

    if family == "hunyuan":
        tokenizer = _llama_tokenizer()
        tokenizer_2 = _clip_tokenizer()
        pipe = diffusers.HunyuanVideoPipeline(
            text_encoder=_llama_encoder(tokenizer, base + _SEED_TEXT),
            tokenizer=tokenizer,
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
            text_encoder_2=_clip_encoder(tokenizer_2, base + _SEED_TEXT_2),
            tokenizer_2=tokenizer_2,
        )
    elif family == "flux":
        tokenizer = _clip_tokenizer()
        tokenizer_2 = _t5_tokenizer()
        pipe = diffusers.FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=_clip_encoder(tokenizer, base + _SEED_TEXT),
            tokenizer=tokenizer,
            text_encoder_2=_t5_encoder(tokenizer_2, base + _SEED_TEXT_2),
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
    elif family == "cosmos":
        tokenizer = _t5_tokenizer()
        pipe = diffusers.CosmosTextToWorldPipeline(
            text_encoder=_t5_encoder(tokenizer, base + _SEED_TEXT),
            tokenizer=tokenizer,
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
            safety_checker=TinySafetyChecker(),
        )
    elif family == "wan":
        tokenizer = _t5_tokenizer()
        pipe = diffusers.WanPipeline(
            tokenizer=tokenizer,
            text_encoder=_t5_encoder(tokenizer, base + _SEED_TEXT, umt5=True),
            vae=vae,
            scheduler=scheduler,
            transformer=transformer,
        )
    else:  # pragma: no cover
        raise AssertionError(family)

    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe.na_accel_tiny = family
    return pipe


def tiny_family(pipe: Any) -> str | None:
    """The family name if ``pipe`` (a pipeline or a transformer) is a tiny random-weight model built here
    (also after ``save_pretrained``/``from_pretrained``), else ``None``."""
    family = getattr(pipe, "na_accel_tiny", None)
    if family:
        return family
    model = getattr(pipe, "transformer", pipe)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get"):
        family = config.get("_na_accel_tiny")
    return family or None


def default_generation_kwargs(family: str) -> dict[str, Any]:
    """Call arguments for a tiny pipeline of ``family``: a few seconds on a CPU, a non-trivial token grid.

    ======= ======================================== =========== ============================================
    family  size                                     token grid  text in the transformer
    ======= ======================================== =========== ============================================
    hunyuan 64x96, 9 frames, embedded guidance 6.0   (3, 4, 6)   32 tokens after the video, padding mask
    flux    96x128, embedded guidance 3.5            (6, 8)      32 T5 tokens before the image (no mask)
    cosmos  64x96, 17 frames, CFG 7.0 (2 passes)     (3, 4, 6)   cross-attention to 32 tokens (zero padded)
    wan     64x96, 9 frames, CFG 5.0 (2 passes)      (3, 4, 6)   cross-attention to 32 tokens (zero padded)
    ======= ======================================== =========== ============================================

    All use ``num_inference_steps=2`` and ``max_sequence_length=32``; add ``prompt``, ``output_type`` and
    ``generator`` as needed.
    """
    _check_family(family)
    return dict(_GENERATION_KWARGS[family])


_GENERATION_KWARGS: dict[str, dict[str, Any]] = {
    "hunyuan": dict(height=64, width=96, num_frames=9, guidance_scale=6.0),
    "flux": dict(height=96, width=128, guidance_scale=3.5),
    "cosmos": dict(height=64, width=96, num_frames=17, guidance_scale=7.0),
    "wan": dict(height=64, width=96, num_frames=9, guidance_scale=5.0),
}
for _kw in _GENERATION_KWARGS.values():
    _kw.update(num_inference_steps=2, max_sequence_length=_TEXT_TOKENS)
del _kw
