"""The paper's baselines (§5.1(4)), one file each; importing this package registers them."""

from dmfnet.models.baselines import acid, appnet, cnn1d, mimetic, xgboost

__all__ = ["acid", "appnet", "cnn1d", "mimetic", "xgboost"]
