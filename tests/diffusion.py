"""A diffusers pipeline for tests: a tiny Stable Diffusion pipeline of random weights, built and saved locally,
that a vision service loads through its own path (AutoPipelineForText2Image, local files only)."""

from __future__ import annotations

from pathlib import Path

TINY_ID = "modalmesh-tests/tiny-stable-diffusion"   # its Hugging Face id when installed in a local hub cache


def build_tiny_stable_diffusion(path: Path) -> Path:
    """A Stable Diffusion pipeline of a few thousand random weights: a tiny UNet, VAE and CLIP text
    encoder, a byte-level CLIP tokenizer and an Euler scheduler, saved as diffusers saves any pipeline."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=2, vocab_size=1000, projection_dim=16))
    characters = list(bytes_to_unicode().values())   # byte-level BPE without merges: one token per byte
    vocabulary = {token: i for i, token in enumerate(characters + [c + "</w>" for c in characters])}
    vocabulary.update({"<|startoftext|>": len(vocabulary), "<|endoftext|>": len(vocabulary) + 1})
    tokenizer = CLIPTokenizer(vocab=vocabulary, merges=[], model_max_length=32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing", steps_offset=1)
    pipeline = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(path)
    return path
