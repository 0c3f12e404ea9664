"""Probes of trained models: the only place after training that rebuilds models from their saved weights.

`explain` draws CAM heatmaps (`bench explain`), `robustness` tests saved runs on MedMNIST-C's corruptions and
`tokens` maps the patch tokens' activation around the booster (`bench analyze ...`). robustness and tokens write
what they measured into the store (`bench.store.write_analysis`), where `bench report` reads it without building
a model.
"""
