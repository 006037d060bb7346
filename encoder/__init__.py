"""AudioMosaic audio encoder: front end, masking, ViT, contrastive loss, pretraining."""

__version__ = "0.1.0"
