"""init_from across tasks: which task's checkpoint may start which task, and which part of it.

An ssl run (task contrastive) holds a ViT encoder and a projector; imagecls (classify_image)
starts from the encoder. checkpoint.params_from restores only what `encoder_part` selects.
"""

from absl import logging
import jax

from bigmodel_jax.errors import RunError

# (task of the init_from run, task of this run): this run may start from the other's encoder,
# i.e. every parameter both models have (same path, same shape); the rest of this model (its
# head) starts fresh and the rest of the checkpoint (e.g. the ssl projector) is left unread.
ENCODER_TRANSFERS = {("contrastive", "classify_image")}


def flat(tree) -> dict:
  return {
      "/".join(str(getattr(k, "key", k)) for k in p): leaf
      for p, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def encoder_part(path: str, saved: dict, have: dict, abstract_params):
  """The parameters of `abstract_params` that the checkpoint holds, checked for shape; `have` is
  {'/'-joined path: shape} of the checkpoint's state ("params/..." entries are read)."""
  have = {k.removeprefix("params/"): v for k, v in have.items() if k.startswith("params/")}
  want = {k: tuple(v.shape) for k, v in flat(abstract_params).items()}
  shared = sorted(set(have) & set(want))
  model = (saved.get("model") or {}).get("name")
  diffs = [f"{k}: checkpoint {have[k]}, now {want[k]}" for k in shared if have[k] != want[k]]
  if not shared or diffs:
    raise RunError(
        f"config.init_from={path!r} holds a {model!r} encoder of another shape than this model "
        f"({'; '.join(diffs[:4]) or 'no parameter in common'}); use the same model settings "
        "as that run (model.*)"
    )
  fresh = sorted(set(want) - set(have))
  logging.info("init_from: encoder from %s; starting fresh: %s", path, ", ".join(fresh) or "none")

  def keep(tree, prefix=""):
    out = {}
    for k, v in tree.items():
      name = f"{prefix}{k}"
      if isinstance(v, dict):
        sub = keep(v, name + "/")
        if sub:
          out[k] = sub
      elif name in have:
        out[k] = v
    return out

  return keep(abstract_params)
