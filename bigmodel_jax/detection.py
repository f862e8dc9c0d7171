"""CenterNet's training targets, loss and decoding, on the device (pure jax; for tasks/detect.py).

Batches hold boxes as the data has them: "boxes" float32 (B, M, 4) pixel x0 y0 x1 y1 and "labels"
int32 (B, M), -1 where a row holds no object; the targets are drawn from them inside the jitted
loss, so the input pipeline stays a plain gather and the targets follow any augmentation.

Targets on the output grid (stride 4), after Zhou et al. 2019 ("Objects as Points"):
  heatmap  per class, the max over that class's objects of a Gaussian centred on the cell holding
           the box centre (exactly 1 there); its spread follows the box's sides, sigma = 0.54 * side
           / 6 per axis as in TTFNet (Liu et al. 2019), so a long box gets a long blob
  size     log(width), log(height) in cells, at the centre cell only (log: a 2-pixel error matters
           more on a small box than on a large one)
  offset   the centre's position inside its cell (what rounding to the cell lost), at that cell
Loss = (focal loss over every cell and class + L1 of size + L1 of offset) / number of objects. The
focal loss is the paper's variant of Lin et al.'s: positives weighted (1 - p)^2, negatives p^2 and
damped by (1 - target)^4 near a centre, so cells next to a centre are barely punished.
"""

import jax
from jax import lax
import jax.numpy as jnp

from bigmodel_jax.models.centernet import STRIDE

SIGMA_ALPHA = 0.54  # TTFNet's Gaussian spread, as a fraction of the box side / 6


def targets(boxes, labels, shape: tuple[int, int], num_classes: int) -> dict:
  """Targets on an output grid of `shape` (h, w) cells (module doc). -> {"heatmap": (B, h, w, C),
  "center": int32 (B, M) flat cell index, "size": (B, M, 2), "offset": (B, M, 2), "valid": (B, M)}
  """
  h, w = shape
  valid = (labels >= 0).astype(jnp.float32)  # (B, M)
  b = boxes.astype(jnp.float32) / STRIDE
  cx, cy = (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2
  bw, bh = jnp.maximum(b[..., 2] - b[..., 0], 1e-2), jnp.maximum(b[..., 3] - b[..., 1], 1e-2)
  ix = jnp.clip(jnp.floor(cx), 0, w - 1)
  iy = jnp.clip(jnp.floor(cy), 0, h - 1)
  sx = jnp.maximum(SIGMA_ALPHA * bw / 6, 0.3)[..., None]  # (B, M, 1); >= 0.3 cells: no spike
  sy = jnp.maximum(SIGMA_ALPHA * bh / 6, 0.3)[..., None]
  gx = jnp.exp(-((jnp.arange(w) - ix[..., None]) ** 2) / (2 * sx**2))  # (B, M, w)
  gy = jnp.exp(-((jnp.arange(h) - iy[..., None]) ** 2) / (2 * sy**2))  # (B, M, h)
  onehot = jax.nn.one_hot(labels, num_classes) * valid[..., None]  # (B, M, C); -1 -> zeros

  def paint(heat, m):  # one object at a time: memory (B, h, w, C), not (B, M, h, w, C)
    g = gy[:, m, :, None] * gx[:, m, None, :]  # (B, h, w)
    return jnp.maximum(heat, g[..., None] * onehot[:, m, None, None, :]), None

  heat0 = jnp.zeros((b.shape[0], h, w, num_classes), jnp.float32)
  heatmap, _ = lax.scan(paint, heat0, jnp.arange(labels.shape[1]))
  return {
      "heatmap": heatmap,
      "center": (iy * w + ix).astype(jnp.int32),
      "size": jnp.stack([jnp.log(bw), jnp.log(bh)], -1),
      "offset": jnp.stack([cx - ix, cy - iy], -1),
      "valid": valid,
  }


def loss(outputs: dict, batch: dict, size_weight: float = 1.0):
  """-> (scalar loss, metrics {name: (sum, count)}) for model outputs (CenterNet's dict) and a
  batch; rows with batch["weight"] 0 (eval padding) count nowhere."""
  logits = outputs["heatmap"]  # (B, h, w, C)
  bsz, h, w, c = logits.shape
  weight = batch.get("weight", jnp.ones((bsz,), jnp.float32))
  t = targets(batch["boxes"], batch["labels"], (h, w), c)
  # Focal loss, in log space for stability: log p = log_sigmoid(x), log(1 - p) = log_sigmoid(-x).
  p = jax.nn.sigmoid(logits)
  pos = (t["heatmap"] == 1.0).astype(jnp.float32)
  focal = -pos * (1 - p) ** 2 * jax.nn.log_sigmoid(logits) - (1 - pos) * p**2 * (
      1 - t["heatmap"]
  ) ** 4 * jax.nn.log_sigmoid(-logits)
  focal = (focal.sum((1, 2, 3)) * weight).sum()
  # L1 at each object's centre cell.
  valid = t["valid"] * weight[:, None]  # (B, M)
  gather = lambda x: jnp.take_along_axis(x.reshape(bsz, h * w, 2), t["center"][..., None], 1)
  size = jnp.abs(gather(outputs["size"]) - t["size"]).sum(-1)  # (B, M)
  offset = jnp.abs(gather(outputs["offset"]) - t["offset"]).sum(-1)
  box = ((size_weight * size + offset) * valid).sum()
  n = valid.sum()
  total = focal + box
  metrics = {"loss": (total, n), "heatmap_loss": (focal, n), "box_loss": (box, n)}
  return total / jnp.maximum(n, 1.0), metrics


def decode(outputs: dict, k: int, image_hw: tuple[int, int]):
  """The k best peaks of each image: a cell counts if it is the max of its 3x3 neighbourhood in
  its class (CenterNet's max-pool "NMS"). -> boxes (B, k, 4) pixel x0 y0 x1 y1 clipped to the
  image, scores (B, k) in 0..1, classes int32 (B, k); highest score first."""
  heat = jax.nn.sigmoid(outputs["heatmap"])  # (B, h, w, C)
  bsz, h, w, c = heat.shape
  peaks = lax.reduce_window(heat, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
  heat = jnp.where(heat == peaks, heat, 0.0)
  scores, index = lax.top_k(heat.reshape(bsz, -1), k)  # (B, k): index = cell * C + class
  classes, cell = index % c, index // c
  gather = lambda x: jnp.take_along_axis(x.reshape(bsz, h * w, 2), cell[..., None], 1)
  size, offset = jnp.exp(gather(outputs["size"])), gather(outputs["offset"])  # (B, k, 2) cells
  centre = jnp.stack([cell % w, cell // w], -1) + offset
  half = size / 2
  boxes = jnp.concatenate([centre - half, centre + half], -1) * STRIDE  # (B, k, 4) pixels
  limit = jnp.array([image_hw[1], image_hw[0]] * 2, jnp.float32)
  return jnp.clip(boxes, 0.0, limit), scores, classes.astype(jnp.int32)
