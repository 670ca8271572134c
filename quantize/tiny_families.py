"""The tiny test families as data: real Gemma 4 layouts shrunk (and one at full E2B size)."""

from __future__ import annotations

S, F = "sliding_attention", "full_attention"

# Family shapes: real layouts shrunk. Widths are multiples of 256 so K-quants apply unchanged.
FAMILIES: dict[str, dict] = {
    "e2b": {  # PLE, KV sharing (5 of 10 layers), double-wide MLP on shared layers, audio
        "text": dict(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=10,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=64,
            global_head_dim=128,
            hidden_size_per_layer_input=256,
            num_kv_shared_layers=5,
            use_double_wide_mlp=True,
            layer_types=[S, S, S, S, F] * 2,
        ),
        "vision": "small",
        "audio": True,
    },
    "e4b": {  # PLE, KV sharing (6 of 12 layers), audio
        "text": dict(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=12,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            global_head_dim=128,
            hidden_size_per_layer_input=256,
            num_kv_shared_layers=6,
            layer_types=[S, S, S, S, S, F] * 2,
        ),
        "vision": "small",
        "audio": True,
    },
    "26b-a4b": {  # mixture of experts beside a dense MLP, K=V on full layers, per-layer KV heads
        "text": dict(
            hidden_size=256,
            intermediate_size=256,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_global_key_value_heads=1,
            head_dim=64,
            global_head_dim=128,
            hidden_size_per_layer_input=0,
            attention_k_eq_v=True,
            enable_moe_block=True,
            num_experts=8,
            top_k_experts=2,
            moe_intermediate_size=256,
            layer_types=[S, S, F, S, S, F],
            use_bidirectional_attention="vision",
        ),
        "vision": "large",
        "audio": False,
    },
    "31b": {  # dense, K=V on full layers, per-layer KV heads, no PLE
        "text": dict(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_global_key_value_heads=1,
            head_dim=64,
            global_head_dim=128,
            hidden_size_per_layer_input=0,
            attention_k_eq_v=True,
            layer_types=[S, S, F, S, S, F],
            use_bidirectional_attention="vision",
        ),
        "vision": "large",
        "audio": False,
    },
    "12b": {  # "unified" (Gemma4Unified*): 31B-like text (K=V, per-layer KV heads), no towers
        "text": dict(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_global_key_value_heads=1,
            head_dim=64,
            global_head_dim=128,
            attention_k_eq_v=True,
            layer_types=[S, S, S, S, S, F],  # the release's period: 5 sliding, 1 full
            use_bidirectional_attention="vision",
        ),
        "vision": "unified",
        "audio": "unified",
        "unified": True,
        # as the 12B assistant's generation_config: never <audio|> (eoa) nor <image|> (eoi), here 112/111
        "suppress_tokens": [112, 111],
    },
    "e2b-real": {  # the real E2B shapes (random values) for benchmarks
        "text": dict(
            hidden_size=1536,
            intermediate_size=6144,
            num_hidden_layers=35,
            num_attention_heads=8,
            num_key_value_heads=1,
            head_dim=256,
            global_head_dim=512,
            hidden_size_per_layer_input=256,
            num_kv_shared_layers=20,
            use_double_wide_mlp=True,
            layer_types=[S, S, S, S, F] * 7,
            sliding_window=512,
            vocab_size=262144,
            max_position_embeddings=131072,
        ),
        "vision": "e2b",
        "audio": "e2b",
    },
}
ALIASES = {"26b": "26b-a4b", "a4b": "26b-a4b", "e2b_real": "e2b-real"}

TEXT_DEFAULTS = dict(
    attention_bias=False,
    attention_dropout=0.0,
    attention_k_eq_v=False,
    bos_token_id=2,
    enable_moe_block=False,
    eos_token_id=1,
    final_logit_softcapping=30.0,
    hidden_activation="gelu_pytorch_tanh",
    initializer_range=0.02,
    max_position_embeddings=4096,
    model_type="gemma4_text",
    moe_intermediate_size=None,
    num_experts=None,
    num_kv_shared_layers=0,
    pad_token_id=0,
    rms_norm_eps=1e-06,
    rope_parameters={
        "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
    },
    sliding_window=8,
    tie_word_embeddings=True,
    top_k_experts=None,
    use_bidirectional_attention=None,
    use_cache=True,
    use_double_wide_mlp=False,
    vocab_size=1024,
)
VISION = {
    "small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, head_dim=32,
                  position_embedding_size=10240, use_clipped_linears=True, standardize=False),
    "large": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, head_dim=32,
                  position_embedding_size=10240, use_clipped_linears=False, standardize=True),
    "e2b": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=16, num_attention_heads=12, head_dim=64,
                position_embedding_size=10240, use_clipped_linears=True, standardize=False),
}  # fmt: skip
# 12B: the patch projection's width differs from the text width here (3840 = 3840 in the release),
# so that a projection read the wrong way round cannot go unnoticed; 48-px patches, table of 1120
UNIFIED_VISION = dict(mm_embed_dim=128, mm_posemb_size=1120, output_proj_dims=128, patch_size=16, pooling_kernel_size=3)
UNIFIED_AUDIO = dict(audio_embed_dim=640)  # 640 samples a token: llama.cpp's gemma4ua has it fixed
# text_config fields Gemma4UnifiedTextConfig does not have (no PLE, no MoE)
NOT_UNIFIED_TEXT = (
    "enable_moe_block",
    "hidden_size_per_layer_input",
    "moe_intermediate_size",
    "num_experts",
    "top_k_experts",
    "vocab_size_per_layer_input",
)
AUDIO = {
    True: dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, output_proj_dims=96),
    "e2b": dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=8, output_proj_dims=1536),
}

# Assistant drafters (Gemma4AssistantForCausalLM), one per family: the release's layout (4 layers,
# 3 sliding + 1 full, all reading the target's KV cache) shrunk. The attention widths must be the
# target's (its cache is read as is); hidden 128 differs from the targets' 256 as the releases'
# 256/1024 differ from theirs (llama.cpp refuses an assistant as wide as its backbone).
DRAFTER_TEXT = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    layer_types=[S, S, S, F],
    hidden_size_per_layer_input=0,
    vocab_size_per_layer_input=0,
    final_logit_softcapping=None,
    enable_moe_block=False,
    use_double_wide_mlp=False,
)
# the real E2B drafter (real-configs/drafters/gemma-4-E2B-it-assistant), for benchmarks
DRAFTER_TEXT_REAL = {**DRAFTER_TEXT, "hidden_size": 256, "intermediate_size": 2048}
# copied from the target: what reading its KV cache needs
DRAFTER_FROM_TARGET = (
    "head_dim",
    "global_head_dim",
    "num_key_value_heads",
    "num_global_key_value_heads",
    "attention_k_eq_v",
    "sliding_window",
    "vocab_size",
    "max_position_embeddings",
    "rope_parameters",
)
# E2B/E4B's releases use the centroid-masked head (use_ordered_embeddings); 32 clusters of 32 tokens
DRAFTER_ORDERED = {"e2b", "e4b", "e2b-real"}
DRAFTER_CENTROIDS = dict(num_centroids=32, centroid_intermediate_top_k=4)
