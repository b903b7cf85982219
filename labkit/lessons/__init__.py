"""labkit.lessons: one experiment per lesson (the loops that measure, the tables, the figures, the sentences).

hardware_profile (01), quantization and quantization_views (02), peers + peers_genai (02's comparison with
llama.cpp, CTranslate2, OpenVINO GenAI and ONNX Runtime GenAI), pruning (03), parallelism (04), batching (05),
kernels (06), casestudy (07), serving (09). A lesson may import core, techniques and serve, and another lesson's
experiment (the case study composes 05's), never the course layer above it.
"""
