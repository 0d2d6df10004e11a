"""The style-transfer loss of Gatys, Ecker & Bethge (2016) as pure, jittable functions.

For one image and one layer, F is the activation reshaped to (M, N): M = h*w positions and
N channels; P is the content image's F and A the style image's Gram matrix.

=============  ==============  ================  ======================
normalization  Gram G          content term      style term
=============  ==============  ================  ======================
gatys          FᵀF / M         ½ Σ (F − P)²      Σ (G − A)² / (4 N²)
johnson        FᵀF / (M·N)     mean((F − P)²)    mean((G − A)²)
seed           FᵀF             mean((F − P)²)    mean((G − A)²) / (N·M)
=============  ==============  ================  ======================

    total = content_weight · Σ c_l content_l + style_weight · Σ w_l style_l + tv_weight · tv(x)
    tv(x) = Σ (x[i+1, j] − x[i, j])² + Σ (x[i, j+1] − x[i, j])²   over the [0, 1] RGB image.

The gatys style term equals the paper's E_l = Σ(G−A)²/(4N²M²) (its Eq. 4) when style and
generated images have the same size, and stays well defined when they don't.

Spatial control (Gatys et al. 2017, *Controlling Perceptual Factors in Neural Style
Transfer*, Sec. 4): with content masks T_r (region r of the output takes style r), each layer
compares region Grams G_r = Σ_p T_r(p)² F_p F_pᵀ / Σ_p T_r(p)² (the paper's Gram of the
masked features F∘T_r, averaged over the region; then ÷N for johnson, ×M for seed, as above)
with the style's, and weights region r by λ_r = a_r w_r / Σ a w (a_r = Σ T_r², w_r its
blend weight). Masks are average-pooled along with the features at each pooling layer.

Video (Ruder, Dosovitskiy & Brox 2016, *Artistic Style Transfer for Videos*, Eq. 7): when the
targets carry ``"temporal": {"warped": ω [1, H, W, 3], "weights": c [1, H, W, 1]}`` (the
previous stylized frame warped into this one, and the per-pixel consistency weights; see
`stylejax.video`), the total gains ``temporal_weight · (1/D) Σ c·(x − ω)²``, D = H·W·3.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from stylejax.errors import StylejaxError
from stylejax.execution import Execution, as_execution
from stylejax.vgg import LAYERS, check_layers, extract_features
from stylejax.weights import Vgg19

NORMALIZATIONS = ("gatys", "johnson", "seed")
POOLINGS = ("max", "avg")
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static description of the loss; hashable, so it can be a static jit argument.

    Layer weights: ``None`` means 1 for each content layer and 1/len for each style layer.
    How the loss is computed (convolution algorithm, activation dtype) is not part of it:
    see `stylejax.execution.Execution`.
    """

    content_layers: tuple[str, ...] = ("relu4_2",)
    content_layer_weights: Optional[tuple[float, ...]] = None
    style_layers: tuple[str, ...] = STYLE_LAYERS
    style_layer_weights: Optional[tuple[float, ...]] = None
    content_weight: float = 5.0
    style_weight: float = 100.0
    tv_weight: float = 32.5
    normalization: str = "johnson"
    pooling: str = "max"
    temporal_weight: float = 0.0  # used only when the targets carry "temporal" (video)

    def __post_init__(self):
        # Normalise lists to tuples so equal configs hash equally, then validate.
        for name in ("content_layers", "style_layers"):
            object.__setattr__(self, name, check_layers(getattr(self, name)))
        for name, layers in (("content_layer_weights", self.content_layers),
                             ("style_layer_weights", self.style_layers)):
            w = getattr(self, name)
            if w is not None:
                w = tuple(float(v) for v in w)
                if len(w) != len(layers):
                    raise StylejaxError(
                        f"{name} has {len(w)} values for {len(layers)} layers: give one per layer.")
                object.__setattr__(self, name, w)
        if self.normalization not in NORMALIZATIONS:
            raise StylejaxError(f"Unknown normalization {self.normalization!r}: use one of "
                                f"{', '.join(NORMALIZATIONS)}.")
        if self.pooling not in POOLINGS:
            raise StylejaxError(f"Unknown pooling {self.pooling!r}: use max or avg.")
        for name in ("content_weight", "style_weight", "tv_weight", "temporal_weight"):
            if not getattr(self, name) >= 0:
                raise StylejaxError(f"{name} must be a number >= 0, got {getattr(self, name)}.")

    @property
    def content_weights(self) -> tuple[float, ...]:
        return self.content_layer_weights or (1.0,) * len(self.content_layers)

    @property
    def style_weights(self) -> tuple[float, ...]:
        n = len(self.style_layers)
        return self.style_layer_weights or (1.0 / n,) * n

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer the loss reads, content first, without repeats."""
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))


def _target_features(vgg, images, layers, cfg, dtype):
    # Targets are computed once per run, so always by the direct convolution: a forward-only
    # Winograd program would be compiled for a single call (512 px: +300 MB of peak RSS
    # while the targets are made, +40 MB at the run's peak).
    return extract_features(vgg, images, layers, cfg.pooling, Execution("direct", dtype))


def _as_batch(image):
    image = jnp.asarray(image, jnp.float32)
    return image[None] if image.ndim == 3 else image


@jax.custom_vjp
def _gram_product(f):
    """FᵀF of [N, M, C] features -> [N, C, C] float32."""
    return jnp.einsum("nmc,nmd->ncd", f, f, precision=jax.lax.Precision.HIGHEST,
                      preferred_element_type=jnp.float32)


def _gram_product_fwd(f):
    return _gram_product(f), f


def _gram_product_bwd(f, dg):
    # d(FᵀF) = F(dG + dGᵀ): one matmul where JAX's transpose rule for the einsum makes two.
    df = jnp.einsum("ncd,nmd->nmc", (dg + jnp.swapaxes(dg, 1, 2)).astype(f.dtype), f,
                    precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
    return (df.astype(f.dtype),)


_gram_product.defvjp(_gram_product_fwd, _gram_product_bwd)


def gram(features, normalization: str = "johnson"):
    """Gram matrices of ``features`` [N, h, w, C] -> [N, C, C] float32.

    ``FᵀF`` divided by M = h*w (gatys), by M*C (johnson) or by 1 (seed). Computed at full
    float32 precision (TPUs otherwise run f32 matmuls as bf16 passes).
    """
    n, h, w, c = features.shape
    g = _gram_product(features.reshape(n, h * w, c))
    scale = {"gatys": h * w, "johnson": h * w * c, "seed": 1}[normalization]
    return g / scale


def layer_masks(masks, layers: Sequence[str]) -> dict:
    """Masks [R, H, W] (image resolution) -> ``{layer: [R, h, w]}`` at each layer's resolution.

    Convolutions keep the size; each pooling averages 2x2 blocks ('valid', like the features'
    pooling), so a mask follows its features exactly and soft edges stay soft.
    """
    m = jnp.asarray(masks, jnp.float32)
    wanted, out = set(layers), {}
    for name in LAYERS[: max(LAYERS.index(n) for n in layers) + 1]:
        if name.startswith("pool"):
            r, h, w = m.shape
            m = m[:, : h // 2 * 2, : w // 2 * 2].reshape(r, h // 2, 2, w // 2, 2).mean((2, 4))
        if name in wanted:
            out[name] = m
    return out


def masked_gram(features, masks, normalization: str = "johnson"):
    """Region Grams of ``features`` [N, h, w, C] under ``masks`` [R, h, w] -> [N, R, C, C].

    ``Σ_p m(p)² F_p F_pᵀ / Σ_p m(p)²`` (the Gram of the masked features F∘m, averaged over the
    region), then divided by C (johnson) or multiplied by M = h*w (seed), so that an all-ones
    mask gives exactly `gram`. An empty region gives zeros.
    """
    n, h, w, c = features.shape
    f = features.reshape(n, h * w, c).astype(jnp.float32)
    wts = jnp.square(jnp.asarray(masks, jnp.float32).reshape(-1, h * w))
    g = jnp.einsum("nmc,rm,nmd->nrcd", f, wts, f, precision=jax.lax.Precision.HIGHEST,
                   preferred_element_type=jnp.float32)
    g = g / jnp.maximum(wts.sum(-1), 1e-12)[None, :, None, None]
    return g * {"gatys": 1.0, "johnson": 1.0 / c, "seed": float(h * w)}[normalization]


def content_term(features, target, normalization: str = "johnson"):
    """Content loss of ``features`` [N, h, w, C] against ``target`` (same shape or [1, ...]):
    ½ Σ (F − P)² (gatys) or mean((F − P)²) (johnson, seed), summed over the batch."""
    d = features.astype(jnp.float32) - target.astype(jnp.float32)
    if normalization == "gatys":
        return 0.5 * jnp.sum(d * d)
    return jnp.sum(jnp.mean(d * d, axis=(1, 2, 3)))


def style_term(gram_x, gram_target, positions: int, normalization: str = "johnson"):
    """Style loss of Grams ``gram_x`` [N, C, C] against ``gram_target`` [C, C] (or [1, C, C]):
    Σ (G − A)² / (4 C²) (gatys), mean((G − A)²) (johnson) or mean((G − A)²) / (C·M) (seed),
    summed over the batch. ``positions`` is M = h*w of the generated image's layer."""
    c = gram_x.shape[-1]
    d = gram_x - gram_target
    if normalization == "gatys":
        return jnp.sum(d * d) / (4.0 * c * c)
    per_image = jnp.mean(d * d, axis=(1, 2))
    if normalization == "seed":
        per_image = per_image / (c * positions)
    return jnp.sum(per_image)


def tv_term(images):
    """Total variation Σ (x[i+1,j] − x[i,j])² + Σ (x[i,j+1] − x[i,j])² of [N, H, W, 3] images
    in [0, 1], summed over channels and the batch."""
    dy = images[:, 1:, :, :] - images[:, :-1, :, :]
    dx = images[:, :, 1:, :] - images[:, :, :-1, :]
    return jnp.sum(dy * dy) + jnp.sum(dx * dx)


def temporal_term(images, warped, weights):
    """Temporal loss of Ruder et al. (2016, Eq. 7), ``(1/D) Σ c·(x − ω)²`` with D = H·W·3:
    ``images`` x [N, H, W, 3] against ``warped`` ω (the previous stylized frame warped into
    this one; [1, H, W, 3] or [N, ...]) under per-pixel ``weights`` c [1, H, W, 1] in [0, 1]
    (0 where the flow is not trusted). Summed over the batch; float32 scalar."""
    _, h, w, c = images.shape
    d = images.astype(jnp.float32) - warped.astype(jnp.float32)
    return jnp.sum(weights.astype(jnp.float32) * d * d) / (h * w * c)


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def _content_targets(vgg, content, cfg, dtype="float32"):
    feats = _target_features(vgg, content, cfg.content_layers, cfg, dtype)
    return {name: feats[name].astype(jnp.float32) for name in cfg.content_layers}


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def _style_grams(vgg, style, cfg, dtype):
    feats = _target_features(vgg, style, cfg.style_layers, cfg, dtype)
    return {name: gram(feats[name], cfg.normalization)[0] for name in cfg.style_layers}


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def _style_masked_grams(vgg, style, mask, cfg, dtype):
    feats = _target_features(vgg, style, cfg.style_layers, cfg, dtype)
    masks = layer_masks(mask[None], cfg.style_layers)
    return {name: masked_gram(feats[name], masks[name], cfg.normalization)[0, 0]
            for name in cfg.style_layers}


def content_targets(vgg: Vgg19, content, cfg: LossConfig,
                    execution: Optional[Execution] = None) -> dict:
    """``make_targets``'s content part alone: ``{layer: [1, h, w, C]}`` float32 features of
    ``content`` [1, H, W, 3] (tiles compute it per tile)."""
    return _content_targets(vgg, _as_batch(content), cfg, as_execution(execution).dtype)


def _mask_array(mask, shape, what):
    m = jnp.asarray(mask, jnp.float32)
    if m.shape != shape:
        raise StylejaxError(f"The {what} is {m.shape[-1] if m.ndim else 0}x"
                            f"{m.shape[-2] if m.ndim > 1 else 0} px but must match its image, "
                            f"{shape[-1]}x{shape[-2]} px.")
    return m


def make_targets(vgg: Vgg19, content, style, cfg: LossConfig, style_blend_weights=None,
                 content_masks=None, style_masks=None,
                 execution: Optional[Execution] = None) -> dict:
    """Content features and style Grams, computed once.

    Args:
      vgg: the VGG-19 bundle.
      content: [1, H, W, 3] or [H, W, 3] RGB in [0, 1].
      style: one image ([1, h, w, 3] or [h, w, 3]; any size) or a list of them.
      cfg: the loss configuration.
      style_blend_weights: one weight >= 0 per style image (normalised to sum 1; default
        equal). Without content masks the Grams are blended; with them, they weight regions.
      content_masks: optional [R, H, W] in [0, 1], R = number of styles: region r of the
        output (where mask r is 1) takes style r (Gatys et al. 2017 spatial control).
      style_masks: optional list, one [h, w] mask (or None) per style image: the part of
        that style image its Gram is taken from.
      execution: its ``dtype`` is the activations' (the targets always use direct
        convolutions: they are computed once).
    Returns:
      ``{"content": {layer: [1, h, w, C]}, "style": {layer: [C, C]}}``, a pytree of arrays;
      with content masks ``"style"`` holds [R, C, C] region Grams and the pytree gains
      ``"masks": {layer: [R, h, w]}`` and ``"region_weights": {layer: [R]}`` (the λ_r).
    """
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    if style_blend_weights is None:
        style_blend_weights = [1.0] * len(styles)
    style_blend_weights = [float(w) for w in style_blend_weights]
    if len(style_blend_weights) != len(styles) or min(style_blend_weights) < 0 \
            or sum(style_blend_weights) <= 0 \
            or not all(map(math.isfinite, style_blend_weights)):
        raise StylejaxError("Give one finite, non-negative blend weight per style image, not "
                            "all zero.")
    if style_masks is None:
        style_masks = [None] * len(styles)
    if len(style_masks) != len(styles):
        raise StylejaxError(f"Give one style mask per style image: {len(style_masks)} masks "
                            f"for {len(styles)} styles.")
    dtype = as_execution(execution).dtype
    total = sum(style_blend_weights)
    weights = [w / total for w in style_blend_weights]
    per_style = []
    for s, m in zip(styles, style_masks):
        s = _as_batch(s)
        per_style.append(_style_grams(vgg, s, cfg, dtype) if m is None else _style_masked_grams(
            vgg, s, _mask_array(m, s.shape[1:3], "style mask"), cfg, dtype))
    content = _as_batch(content)
    targets = {"content": _content_targets(vgg, content, cfg, dtype)}
    w = jnp.asarray(weights, jnp.float32)
    if content_masks is None:
        # One style (weight 1) is its own blend, exactly: nothing to compute.
        targets["style"] = per_style[0] if len(per_style) == 1 else _blend(w, per_style)
        return targets
    masks = jnp.asarray(content_masks, jnp.float32)
    if masks.ndim != 3 or masks.shape[0] != len(styles):
        raise StylejaxError(f"Give one content mask per style image ({len(styles)}), as an "
                            f"[R, H, W] array; got shape {masks.shape}.")
    masks = _mask_array(masks, (len(styles),) + content.shape[1:3], "content mask")
    return {**targets, **_region_targets(masks, w, per_style, tuple(cfg.style_layers))}


# The two below are jitted so that combining the styles' Grams is one small program, not an
# eagerly compiled operation per layer and operator (192 px, one style: ten such compiles;
# cold make_targets 0.64 -> 0.48 s without them).
@jax.jit
def _blend(weights, grams):
    """Each layer's ``Σ_s weights[s] · grams[s][layer]`` (``weights`` [S], summing to 1). The
    eager sum's order; XLA fuses each multiply and add, so it agrees with it to an ulp."""
    return jax.tree.map(lambda *g: sum(weights[i] * a for i, a in enumerate(g)), *grams)


@functools.partial(jax.jit, static_argnames="layers")
def _region_targets(masks, weights, grams, layers):
    """``masks`` [R, H, W] with the style ``weights`` [R] and each style's Grams -> the
    targets' ``"masks"`` ({layer: [R, h, w]}), ``"region_weights"`` ({layer: [R]}, the λ_r)
    and ``"style"`` ({layer: [R, C, C]}); as the former eager code gave them, to an ulp."""
    layered = layer_masks(masks, layers)
    region_weights = {}
    for name, m in layered.items():
        a = jnp.square(m).sum((1, 2)) * weights
        region_weights[name] = a / jnp.maximum(a.sum(), 1e-12)
    return {"masks": layered, "region_weights": region_weights,
            "style": jax.tree.map(lambda *g: jnp.stack(g), *grams)}


def _terms(vgg, image, targets, cfg, execution):
    x = _as_batch(image)
    feats = extract_features(vgg, x, cfg.layers, cfg.pooling, as_execution(execution))
    return feature_terms(feats, x, targets, cfg)


def feature_terms(feats: dict, x, targets: dict, cfg: LossConfig) -> dict:
    """`loss_terms` from the VGG features ``feats`` ({layer: [N, h, w, C]}, `extract_features`
    of ``cfg.layers``) of the image ``x`` [N, H, W, 3]: for callers that run the network
    once over many images and weigh each image's terms themselves (`jax.vmap` this over
    images, each with its own targets)."""
    content = sum(w * content_term(feats[name], targets["content"][name], cfg.normalization)
                  for name, w in zip(cfg.content_layers, cfg.content_weights))
    style = 0.0
    masks = targets.get("masks")  # pytree structure, so this branch is static under jit
    for name, w in zip(cfg.style_layers, cfg.style_weights):
        f = feats[name]
        m = f.shape[1] * f.shape[2]
        if masks is None:
            style += w * style_term(gram(f, cfg.normalization), targets["style"][name], m,
                                    cfg.normalization)
            continue
        g, lam = masked_gram(f, masks[name], cfg.normalization), targets["region_weights"][name]
        style += w * sum(lam[r] * style_term(g[:, r], targets["style"][name][r], m,
                                             cfg.normalization) for r in range(g.shape[1]))
    terms = {"content": cfg.content_weight * content,
             "style": cfg.style_weight * style,
             "tv": cfg.tv_weight * tv_term(x) if cfg.tv_weight else jnp.zeros((), jnp.float32)}
    temporal = targets.get("temporal")  # pytree structure: static under jit, as "masks"
    if temporal is not None:
        terms["temporal"] = (cfg.temporal_weight * temporal_term(x, temporal["warped"],
                                                                 temporal["weights"])
                             if cfg.temporal_weight else jnp.zeros((), jnp.float32))
    return terms


@functools.partial(jax.jit, static_argnames=("cfg", "execution"))
def loss_terms(vgg: Vgg19, image, targets: dict, cfg: LossConfig,
               execution: Optional[Execution] = None) -> dict:
    """The weighted parts of the loss, ``{"content", "style", "tv"}`` float32 scalars, and
    ``"temporal"`` when the targets carry it (arguments as `loss_fn`)."""
    return _terms(vgg, image, targets, cfg, execution)


@functools.partial(jax.jit, static_argnames=("cfg", "execution"))
def loss_fn(vgg: Vgg19, image, targets: dict, cfg: LossConfig,
            execution: Optional[Execution] = None):
    """The total style-transfer loss (float32 scalar) of ``image``.

    Args:
      vgg: the VGG-19 bundle (an argument, so nothing is baked into the compiled program).
      image: [H, W, 3] or [N, H, W, 3] RGB in [0, 1] (a batch sums the per-image losses).
      targets: from `make_targets`.
      cfg: static `LossConfig`.
      execution: static `Execution` (convolution algorithm, activation dtype); None: the
        default, ``Execution()``. It changes the speed, not the loss (float32 rounding).
    Pure: works under `jax.grad` (w.r.t. ``image``), `jax.vmap` and inside another `jax.jit`.
    """
    return sum(_terms(vgg, image, targets, cfg, execution).values())
