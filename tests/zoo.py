"""The test zoo: real architectures from transformers configs, random weights, float32, small inputs.

Shared by the runtime and ONNX export tests, which check that placed models compute what the originals do.
"""

import torch


def resnet50():
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig()).eval(), (torch.randn(1, 3, 64, 64),)


def bert_base():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig()).eval(), {"input_ids": torch.randint(0, 30522, (1, 16))}


def small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval(), {"input_ids": torch.randint(0, 256, (1, 12)), "use_cache": False}


ZOO = {"resnet50": resnet50, "bert-base": bert_base, "small-llama": small_llama}


# Architectures beyond the zoo's first three, small enough for the suite: an encoder-decoder, convolutional and
# windowed-attention vision models (one in float16), audio, a mixture of experts and a decode step with a KV cache.
# Each builder seeds itself, so a model rebuilt from this file has the weights it was exported with.


def t5_small():
    from transformers import T5Config, T5Model

    torch.manual_seed(0)
    config = T5Config(d_model=64, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16, vocab_size=256)
    return T5Model(config).eval(), {"input_ids": torch.randint(0, 256, (1, 12)),
                                    "decoder_input_ids": torch.randint(0, 256, (1, 6)), "use_cache": False}


def convnext():
    from transformers import ConvNextConfig, ConvNextModel

    torch.manual_seed(0)
    config = ConvNextConfig(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 2, 1])
    return ConvNextModel(config).eval(), (torch.randn(1, 3, 64, 64),)


def swin_float16():
    from transformers import SwinConfig, SwinModel

    torch.manual_seed(0)
    config = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4)
    return SwinModel(config).to(torch.float16).eval(), (torch.randn(1, 3, 64, 64, dtype=torch.float16),)


def whisper():
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    config = WhisperConfig(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
                           max_source_positions=32, max_target_positions=32, vocab_size=256, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    return WhisperModel(config).eval(), {"input_features": torch.randn(1, 16, 64),
                                         "decoder_input_ids": torch.randint(0, 256, (1, 4)), "use_cache": False}


def mixtral(layers: int = 2):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=256,
                           max_position_embeddings=64)
    return MixtralForCausalLM(config).eval(), {"input_ids": torch.randint(0, 256, (1, 8)), "use_cache": False}


def qwen2_decode_step():
    """One decode step: a token and the DynamicCache of an 8-token prompt."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        cache = model(torch.randint(0, 256, (1, 8)), use_cache=True).past_key_values
    return model, {"input_ids": torch.randint(0, 256, (1, 1)), "cache": cache, "use_cache": True}


BEYOND_THE_ZOO = {builder.__name__: builder
                  for builder in (t5_small, convnext, swin_float16, whisper, mixtral, qwen2_decode_step)}
