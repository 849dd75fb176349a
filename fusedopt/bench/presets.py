"""Parameter shape lists of real models, written from the architectures' published definitions.

Nothing is downloaded: each preset is a function returning the ``(name, shape)`` list in the order
``model.named_parameters()`` yields it. The totals are checked in tests/test_bench_cli.py against the
published parameter counts (ResNet-50 25,557,032; ViT-B/16 86,567,656; BERT-base 109,482,240).
"""


def _resnet(blocks, *, classifier=True, width=64, expansion=4, num_classes=1000):
    """torchvision's Bottleneck ResNet (v1.5: stride on the 3x3), conv layers without bias."""
    out = [("conv1.weight", (width, 3, 7, 7)), ("bn1.weight", (width,)), ("bn1.bias", (width,))]
    inplanes = width
    for stage, count in enumerate(blocks, start=1):
        planes = width * 2 ** (stage - 1)
        for b in range(count):
            pre = f"layer{stage}.{b}"
            out += [(f"{pre}.conv1.weight", (planes, inplanes, 1, 1)),
                    (f"{pre}.bn1.weight", (planes,)), (f"{pre}.bn1.bias", (planes,)),
                    (f"{pre}.conv2.weight", (planes, planes, 3, 3)),
                    (f"{pre}.bn2.weight", (planes,)), (f"{pre}.bn2.bias", (planes,)),
                    (f"{pre}.conv3.weight", (planes * expansion, planes, 1, 1)),
                    (f"{pre}.bn3.weight", (planes * expansion,)),
                    (f"{pre}.bn3.bias", (planes * expansion,))]
            if b == 0:
                out += [(f"{pre}.downsample.0.weight", (planes * expansion, inplanes, 1, 1)),
                        (f"{pre}.downsample.1.weight", (planes * expansion,)),
                        (f"{pre}.downsample.1.bias", (planes * expansion,))]
            inplanes = planes * expansion
    if classifier:
        out += [("fc.weight", (num_classes, inplanes)), ("fc.bias", (num_classes,))]
    return out


def resnet50():
    """torchvision resnet50: 161 tensors, 25,557,032 parameters."""
    return _resnet([3, 4, 6, 3])


def vit_b16(num_classes=1000):
    """torchvision vit_b_16 (patch 16, 224px, 12 layers, width 768, MLP 3072):
    152 tensors, 86,567,656 parameters."""
    d, mlp, seq = 768, 3072, (224 // 16) ** 2 + 1
    out = [("class_token", (1, 1, d)), ("conv_proj.weight", (d, 3, 16, 16)), ("conv_proj.bias", (d,)),
           ("encoder.pos_embedding", (1, seq, d))]
    for i in range(12):
        pre = f"encoder.layers.encoder_layer_{i}"
        out += [(f"{pre}.ln_1.weight", (d,)), (f"{pre}.ln_1.bias", (d,)),
                (f"{pre}.self_attention.in_proj_weight", (3 * d, d)),
                (f"{pre}.self_attention.in_proj_bias", (3 * d,)),
                (f"{pre}.self_attention.out_proj.weight", (d, d)),
                (f"{pre}.self_attention.out_proj.bias", (d,)),
                (f"{pre}.ln_2.weight", (d,)), (f"{pre}.ln_2.bias", (d,)),
                (f"{pre}.mlp.0.weight", (mlp, d)), (f"{pre}.mlp.0.bias", (mlp,)),
                (f"{pre}.mlp.3.weight", (d, mlp)), (f"{pre}.mlp.3.bias", (d,))]
    out += [("encoder.ln.weight", (d,)), ("encoder.ln.bias", (d,)),
            ("heads.head.weight", (num_classes, d)), ("heads.head.bias", (num_classes,))]
    return out


def bert_base():
    """bert-base-uncased BertModel with pooler (vocab 30522, 512 positions, 12 layers, width 768):
    199 tensors, 109,482,240 parameters."""
    d, ff = 768, 3072
    out = [("embeddings.word_embeddings.weight", (30522, d)),
           ("embeddings.position_embeddings.weight", (512, d)),
           ("embeddings.token_type_embeddings.weight", (2, d)),
           ("embeddings.LayerNorm.weight", (d,)), ("embeddings.LayerNorm.bias", (d,))]
    for i in range(12):
        pre = f"encoder.layer.{i}"
        for proj in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            out += [(f"{pre}.{proj}.weight", (d, d)), (f"{pre}.{proj}.bias", (d,))]
        out += [(f"{pre}.attention.output.LayerNorm.weight", (d,)),
                (f"{pre}.attention.output.LayerNorm.bias", (d,)),
                (f"{pre}.intermediate.dense.weight", (ff, d)), (f"{pre}.intermediate.dense.bias", (ff,)),
                (f"{pre}.output.dense.weight", (d, ff)), (f"{pre}.output.dense.bias", (d,)),
                (f"{pre}.output.LayerNorm.weight", (d,)), (f"{pre}.output.LayerNorm.bias", (d,))]
    out += [("pooler.dense.weight", (d, d)), ("pooler.dense.bias", (d,))]
    return out


def llama_7b_layer():
    """One LLaMA-7B decoder layer (hidden 4096, MLP 11008, no biases, RMSNorm):
    9 tensors, 202,383,360 parameters."""
    d, ff = 4096, 11008
    out = [(f"self_attn.{p}_proj.weight", (d, d)) for p in "qkvo"]
    out += [("mlp.gate_proj.weight", (ff, d)), ("mlp.up_proj.weight", (ff, d)),
            ("mlp.down_proj.weight", (d, ff)),
            ("input_layernorm.weight", (d,)), ("post_attention_layernorm.weight", (d,))]
    return out


def detector_465():
    """A detection backbone's parameter list: ResNet-152 as detectors use it (torchvision /
    mmdetection layout, classifier removed): stem conv + BN, 50 bottlenecks (3 convs + 3 BNs
    each), 4 downsample conv + BN: 465 tensors, 58,143,808 parameters. Many small BN tensors
    next to large convs, the mix a paramwise config turns into one param group per tensor."""
    return _resnet([3, 8, 36, 3], classifier=False)


PRESETS = {
    "resnet50": resnet50,
    "vit-b16": vit_b16,
    "bert-base": bert_base,
    "llama-7b-layer": llama_7b_layer,
    "detector-465": detector_465,
}


# The host preset (``--preset host``, issue 28): N tensors of 64 elements, one group each, N swept
# over these counts. The compute is negligible (64 elements: one or two vectors), so a step's
# time is host time: Python, dispatch, per-tensor and per-group work, launches.
HOST = "host"
HOST_NUMEL = 64
HOST_COUNTS = (1, 16, 152, 465, 1000, 5000)


def shapes(name):
    """The list of parameter shapes of preset ``name``."""
    return [shape for _, shape in PRESETS[name]()]
