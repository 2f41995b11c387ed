"""Where the real model files live: names -> download URLs (several per file, tried in turn).

Pure data, no torch: the config validates model names against it before anything loads.
No hashes are published for the VQGAN files, so the loader records sha256 and size on
first download and checks them on every later load. CLIP's URLs embed their sha256.
"""

from __future__ import annotations

from dataclasses import dataclass

_HEIBOX = "https://heibox.uni-heidelberg.de"


@dataclass(frozen=True)
class VQGANSource:
    """Download locations of one VQGAN: its yaml config and its checkpoint."""

    config_urls: tuple[str, ...]
    checkpoint_urls: tuple[str, ...]
    about: str = ""


def _heibox(share: str, config: str, checkpoint: str) -> tuple[str, str]:
    base = f"{_HEIBOX}/d/{share}/files/?p="
    return f"{base}{config}&dl=1", f"{base}{checkpoint}&dl=1"


_IMAGENET_16384 = _heibox("a7530b09fed84f80a887", "%2Fconfigs%2Fmodel.yaml", "%2Fckpts%2Flast.ckpt")
_IMAGENET_1024 = _heibox("8088892a516d4e3baf92", "%2Fconfigs%2Fmodel.yaml", "%2Fckpts%2Flast.ckpt")
_SFLCKR = _heibox(
    "73487ab6e5314cb5adba",
    "%2Fconfigs%2F2020-11-09T13-31-51-project.yaml",
    "%2Fcheckpoints%2Flast.ckpt",
)
_OPENIMAGES = _heibox("2e5662443a6b4307b470", "%2Fconfigs%2Fmodel.yaml", "%2Fckpts%2Flast.ckpt")
_PIXRAY = "https://github.com/pixray/pixray/releases/download/v1.7.1"

VQGAN_MODELS: dict[str, VQGANSource] = {
    "vqgan_imagenet_f16_16384": VQGANSource(
        (_IMAGENET_16384[0], f"{_HEIBOX}/f/274fb24ed38341bfa753/?dl=1"),
        (_IMAGENET_16384[1], f"{_HEIBOX}/f/867b05fc8c4841768640/?dl=1"),
        "ImageNet, 16384 codes, f16 (the default; best all-rounder)",
    ),
    "vqgan_imagenet_f16_1024": VQGANSource(
        (_IMAGENET_1024[0], f"{_HEIBOX}/f/6ecf2af6c658432c8298/?dl=1"),
        (_IMAGENET_1024[1], f"{_HEIBOX}/f/140747ba53464f49b476/?dl=1"),
        "ImageNet, 1024 codes, f16",
    ),
    "wikiart_16384": VQGANSource(
        (
            f"{_PIXRAY}/vqgan_wikiart_16384.yaml",
            "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.yaml",
        ),
        (
            f"{_PIXRAY}/vqgan_wikiart_16384.ckpt",
            "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.ckpt",
        ),
        "WikiArt paintings, 16384 codes, f16",
    ),
    "coco": VQGANSource(
        ("https://dl.nmkd.de/ai/clip/coco/coco.yaml",),
        ("https://dl.nmkd.de/ai/clip/coco/coco.ckpt",),
        "COCO scenes, f16",
    ),
    "sflckr": VQGANSource((_SFLCKR[0],), (_SFLCKR[1],), "S-FLCKR landscapes, f16"),
    "openimages_f8_8192": VQGANSource(
        (_OPENIMAGES[0],), (_OPENIMAGES[1],), "Open Images, 8192 codes, f8, Gumbel quantiser"
    ),
}

_OPENAI = "https://openaipublic.azureedge.net/clip/models"

# CLIP name -> official URL; the folder in each URL is the file's sha256.
_CLIP_FILES = {
    "RN50": "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": (
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt"
    ),
}
CLIP_MODELS: dict[str, str] = {name: f"{_OPENAI}/{path}" for name, path in _CLIP_FILES.items()}
