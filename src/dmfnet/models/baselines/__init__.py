"""The paper's baselines (§5.1(4)), one file each; importing this package registers them."""
