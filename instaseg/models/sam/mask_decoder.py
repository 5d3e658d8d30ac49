"""SAM's mask decoder: image embedding + prompt tokens -> 4 low-res mask logits and their predicted IoU.

A two-way transformer (prompt tokens attend to the image and the image attends back, two layers, then a final
token-to-image attention) updates the output tokens (1 IoU token, 4 mask tokens) and the image embedding;
the embedding is upscaled x4 (two transposed convs) to `(B, 32, 256, 256)` and each mask token's hypernetwork
MLP gives the weights of its mask. Output 0 is the single-mask answer, outputs 1..3 the multimask answers.
Parameter names are the official checkpoints' (`mask_decoder.*`).

CPU cost (measured, 64 prompts): the official code repeats the image embedding once per prompt before the
first layer, although until the first image->token update every prompt sees the same image; here the image
side stays a batch of one until then (its projections run once), and the two stride-2 transposed convs run
as matrix products on channels-last tokens with a fused LayerNorm. Same arithmetic, reordered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from instaseg.models.sam.common import MLP, LayerNorm2d, MLPBlock

TRANSFORMER_DIM = 256
NUM_HEADS = 8
MLP_DIM = 2048
NUM_MULTIMASK_OUTPUTS = 3


def selected_outputs(multimask_output: bool) -> slice:
    """The outputs a caller gets of the four: 1..3 (multimask) or 0 (the single-mask answer)."""
    return slice(1, None) if multimask_output else slice(0, 1)


@dataclass
class DecoderState:
    """`decode_tokens` output for B prompts: `iou (B, 4)`, `hyper (B, 4, 32)` mask weights, the updated image
    `keys (B, h * w, 256)` and the embedding grid `size (h, w)`."""

    iou: torch.Tensor
    hyper: torch.Tensor
    keys: torch.Tensor
    size: tuple[int, int]

    def select(self, prompts: torch.Tensor | slice) -> DecoderState:
        """The state of some prompts only (`prompts`: indices, a bool mask over B or a slice)."""
        return DecoderState(self.iou[prompts], self.hyper[prompts], self.keys[prompts], self.size)


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width by `downsample_rate`.

    q `(B, Nq, 256)`, k and v `(B, Nk, 256)` -> `(B, Nq, 256)`.
    """

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        internal = dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, internal)
        self.k_proj = nn.Linear(dim, internal)
        self.v_proj = nn.Linear(dim, internal)
        self.out_proj = nn.Linear(internal, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        return x.reshape(batch, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """A batch of one among q, k, v (the shared image) is projected once and broadcast."""
        batch = max(q.shape[0], k.shape[0], v.shape[0])
        q, k, v = (
            self._heads(proj(x)).expand(batch, -1, -1, -1)
            for proj, x in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v))
        )
        out = F.scaled_dot_product_attention(q, k, v)
        _, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))

    def _head_weights(self, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """A projection's weight as `(heads, head_dim, 256)` and bias as `(heads, head_dim)`."""
        return linear.weight.view(self.num_heads, -1, linear.in_features), linear.bias.view(
            self.num_heads, -1
        )

    def tokens_to_image(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """`forward` for few queries (tokens `(B, T, 256)`) over many keys (image `(B, N, 256)`).

        Instead of projecting all N keys and values (2 x N x 256 x 128 per prompt), the queries are mapped
        back through the key projection (`q_h W_k,h`; the key bias adds a constant per query, which softmax
        ignores) and the attention-weighted image is projected afterwards (softmax rows sum to 1, so the value
        bias passes through): 2 x 8T x N x 256 multiply-adds, 2.3x fewer for T = 7. With an image shared by
        several prompts (batch 1) the plain `forward` is cheaper: its projections run once.
        """
        if k.shape[0] == 1 and q.shape[0] > 1:
            return self.forward(q, k, v)
        batch, tokens, _ = q.shape
        scale = (self.q_proj.out_features // self.num_heads) ** -0.5
        key_weight, _ = self._head_weights(self.k_proj)
        value_weight, value_bias = self._head_weights(self.v_proj)
        queries = self._heads(self.q_proj(q))  # (B, heads, T, d)
        mapped = torch.einsum("bhtd,hdc->bhtc", queries, key_weight).reshape(batch, -1, k.shape[-1])
        weights = torch.softmax((mapped * scale) @ k.transpose(1, 2), dim=-1)  # (B, heads * T, N)
        pooled = (weights @ v).view(batch, self.num_heads, tokens, -1)  # (B, heads, T, 256)
        out = torch.einsum("bhtc,hdc->bthd", pooled, value_weight) + value_bias
        return self.out_proj(out.reshape(batch, tokens, -1))

    def image_to_tokens(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """`forward` for many queries (image `(B or 1, N, 256)`) over few keys (tokens `(B, T, 256)`).

        The output projection is folded into the values (`V_h W_o,h^T`, (T, 256) per head), so the N queries
        are multiplied once by a (8T, 256) matrix instead of projected down and back up (2 x N x 128 x 256);
        for a per-prompt image the query projection is folded into the keys the same way (its bias becomes a
        per-key offset). An image shared by several prompts keeps its query projection, computed once.
        """
        batch, tokens, _ = k.shape
        scale = (self.q_proj.out_features // self.num_heads) ** -0.5
        keys = self._heads(self.k_proj(k))  # (B, heads, T, d)
        values = self._heads(self.v_proj(v))
        if q.shape[0] == 1 and batch > 1:
            queries = self._heads(self.q_proj(q))  # (1, heads, N, d), once for all prompts
            scores = queries @ (keys * scale).transpose(2, 3)  # (B, heads, N, T)
            weights = _softmax_over_few(scores).transpose(1, 2)  # (B, N, heads, T)
        else:
            query_weight, query_bias = self._head_weights(self.q_proj)
            scaled = keys * scale
            mapped = torch.einsum("bhtd,hdc->bhtc", scaled, query_weight).reshape(batch, -1, q.shape[-1])
            offsets = torch.einsum("bhtd,hd->bht", scaled, query_bias).reshape(batch, 1, -1)
            scores = torch.baddbmm(offsets, q, mapped.transpose(1, 2))  # (B, N, heads * T)
            weights = _softmax_over_few(scores.view(batch, -1, self.num_heads, tokens))
        weights = weights.reshape(batch, -1, self.num_heads * tokens)
        out_weight = self.out_proj.weight.view(self.out_proj.out_features, self.num_heads, -1)
        folded = torch.einsum("bhtd,chd->bhtc", values, out_weight).reshape(
            batch, -1, self.out_proj.out_features
        )
        return torch.baddbmm(self.out_proj.bias, weights, folded)


def _softmax_over_few(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last dimension (the 7 prompt tokens).

    Written out because `torch.softmax` over a last dimension of 7 runs ~5x slower on the CPU than these
    three steps (measured on `(4, 4096, 8, 7)`: 6.4 ms vs 1.3 ms); same formula (max subtracted first).
    The exponential is taken in place on the shifted copy; the division is not, because training (the
    promptable model) backpropagates through the exponential's output.
    """
    exponentials = (scores - scores.amax(dim=-1, keepdim=True)).exp_()
    return exponentials / exponentials.sum(dim=-1, keepdim=True)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention (each + LayerNorm).

    The first layer's self-attention runs on the tokens without their position (and without a residual).
    """

    def __init__(self, skip_first_layer_pe: bool) -> None:
        super().__init__()
        dim = TRANSFORMER_DIM
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = Attention(dim, NUM_HEADS)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, NUM_HEADS, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, MLP_DIM, activation=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, NUM_HEADS, downsample_rate=2)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries `(B, T, 256)` tokens, keys `(B or 1, 4096, 256)` image; `*_pe` their positions."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        keys_with_pe = keys + key_pe
        attended = self.cross_attn_token_to_image.tokens_to_image(queries + query_pe, keys_with_pe, keys)
        queries = self.norm2(queries + attended)
        queries = self.norm3(queries + self.mlp(queries))
        attended = self.cross_attn_image_to_token.image_to_tokens(keys_with_pe, queries + query_pe, queries)
        keys = self.norm4(keys + attended)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Two `TwoWayAttentionBlock`s and a final token->image attention.

    image `(B or 1, 256, h, w)`, image_pe `(1, 256, h, w)`, tokens `(B, T, 256)` -> tokens `(B, T, 256)` and
    the updated image `(B, h * w, 256)`.
    """

    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TwoWayAttentionBlock(skip_first_layer_pe=i == 0) for i in range(depth))
        self.final_attn_token_to_image = Attention(TRANSFORMER_DIM, NUM_HEADS, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(TRANSFORMER_DIM)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attended = self.final_attn_token_to_image.tokens_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attended), keys


class MaskDecoder(nn.Module):
    """Image embedding + prompt embeddings -> `masks (B, C, 256, 256)` logits, `iou (B, C)`; C = 3 or 1."""

    def __init__(self) -> None:
        super().__init__()
        dim = TRANSFORMER_DIM
        self.num_mask_tokens = NUM_MULTIMASK_OUTPUTS + 1
        self.transformer = TwoWayTransformer()
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings `(1 or B, 256, 64, 64)`, image_pe `(1, 256, 64, 64)`, sparse `(B, T, 256)`, dense
        `(B or 1, 256, 64, 64)` -> masks `(B, C, 256, 256)` logits, iou `(B, C)`; C = 3 (outputs 1..3) if
        `multimask_output` else 1 (output 0)."""
        masks, iou = self.predict_all(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        outputs = selected_outputs(multimask_output)
        return masks[:, outputs], iou[:, outputs]

    def predict_all(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All four outputs: masks `(B, 4, 256, 256)` logits, iou `(B, 4)`. A dense embedding of batch 1
        (no mask input) is shared by all B prompts."""
        state = self.decode_tokens(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return self.masks(state), state.iou

    def decode_tokens(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> DecoderState:
        """The transformer part: predicted IoU of the four outputs and what `masks` needs to draw them.

        Split from `masks` so that a caller can drop prompts by predicted IoU before paying for the upscaling
        (about a third of the decoder's time).
        """
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings + dense_prompt_embeddings
        _, _, height, width = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        hyper = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        return DecoderState(self.iou_prediction_head(hs[:, 0]), hyper, keys, (height, width))

    def masks(self, state: DecoderState) -> torch.Tensor:
        """Mask logits `(B, 4, 256, 256)` of a `decode_tokens` result (or of a subset of its prompts)."""
        return self._masks(state.keys, state.hyper, *state.size)

    def _masks(self, keys: torch.Tensor, hyper: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """keys `(B, h * w, 256)`, hyper `(B, M, 32)` -> `(B, M, 4h, 4w)` mask logits.

        `output_upscaling` (ConvTranspose 2x2 stride 2, LayerNorm2d, GELU, ConvTranspose 2x2 stride 2, GELU)
        computed as products with the kernels: a 2x2 stride-2 transposed conv maps each input pixel to its own
        2x2 output block, i.e. one (C_in, C_out * 4) matrix product on channels-last tokens.
        """
        up1, norm, _, up2, _ = self.output_upscaling
        batch, tokens, _ = keys.shape
        c1, c2 = up1.out_channels, up2.out_channels
        # Kernels reordered to (C_in, i, j, C_out): each input pixel's 2x2 output block comes out channels
        # last and contiguous (LayerNorm over c1 and the next product read it without a copy), bias fused.
        kernel1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, -1)
        x = F.linear(keys, kernel1.t(), up1.bias.repeat(4)).view(batch, tokens, 2, 2, c1)
        x = F.gelu(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        # Sub-pixel (k, l) of each (i, j), channels last, so that the product with each mask's weights over
        # c2 is a plain matrix product (no copy of the largest tensor).
        kernel2 = up2.weight.permute(0, 2, 3, 1).reshape(c1, -1)
        y = F.gelu(F.linear(x, kernel2.t(), up2.bias.repeat(4)).view(batch, tokens * 16, c2))
        outputs = hyper.shape[1]
        masks = (y @ hyper.transpose(1, 2)).view(batch, height, width, 2, 2, 2, 2, outputs)
        # Output pixel (4r + 2i + k, 4s + 2j + l) for input pixel (r, s); dims (b, r, s, i, j, k, l, m).
        masks = masks.permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(batch, outputs, 4 * height, 4 * width)
