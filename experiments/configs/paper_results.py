"""The paper's published numbers (top-1 test accuracy in %, mean ± std over
three seeds), keyed like the presets' runs: preset -> (row, column) -> value.

Transcribed from Lin et al. (ICML 2020): Table 1 (§5.2) and Tables 2 and 3
(App. E.1). Figures 1-4 and the inline tables of Figure 2 exist only as images
in our copy of the paper, so no numbers are given for them.
"""

TABLE1_COLUMNS = (
    "mini-batch SGD (w/o LARS)", "EXTRAP-SGD (w/o LARS)", "mini-batch SGD",
    "SmoothOut", "extrapolated SGD, uniform noise",
    "extrapolated SGD, stochastic noise", "EXTRAP-SGD")

PAPER_RESULTS: dict[str, dict[tuple[str, str], tuple[float, float]]] = {
    "table1": {
        **dict(zip((("ResNet-20 on CIFAR-10", c) for c in TABLE1_COLUMNS), (
            (90.00, 0.48), (90.47, 0.16), (91.36, 0.19), (91.55, 0.20),
            (91.53, 0.25), (91.66, 0.24), (91.72, 0.11)))),
        **dict(zip((("VGG-11 on CIFAR-10", c) for c in TABLE1_COLUMNS), (
            (73.09, 9.35), (76.79, 3.5), (86.64, 0.10), (86.92, 0.15),
            (87.00, 0.31), (86.04, 0.43), (87.00, 0.26)))),
    },
    "table2": {
        ("CIFAR-10", "mini-batch SGD"): (91.36, 0.19),
        ("CIFAR-10", "mini-batch SGD (with post-local SGD)"): (91.73, 0.25),
        ("CIFAR-10", "EXTRAP-SGD"): (91.72, 0.11),
        ("CIFAR-10", "EXTRAP-SGD (with post-local SGD)"): (92.23, 0.02),
        ("CIFAR-100", "mini-batch SGD"): (65.79, 0.46),
        ("CIFAR-100", "mini-batch SGD (with post-local SGD)"): (67.39, 0.18),
        ("CIFAR-100", "EXTRAP-SGD"): (66.63, 0.32),
        ("CIFAR-100", "EXTRAP-SGD (with post-local SGD)"): (68.06, 0.21),
    },
    "table3": {
        ("Mini-batch SGD", "(B = 512, K = 16)"): (91.35, 0.19),
        ("Mini-batch SGD", "(B = 256, K = 32)"): (91.36, 0.19),
        ("Mini-batch SGD", "(B = 128, K = 64)"): (91.29, 0.13),
        ("Mini-batch SGD", "(B = 64, K = 128)"): (91.32, 0.17),
        ("EXTRAP-SGD", "(B = 512, K = 16)"): (91.62, 0.32),
        ("EXTRAP-SGD", "(B = 256, K = 32)"): (91.72, 0.11),
        ("EXTRAP-SGD", "(B = 128, K = 64)"): (91.88, 0.27),
        ("EXTRAP-SGD", "(B = 64, K = 128)"): (91.89, 0.24),
    },
}
