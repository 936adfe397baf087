"""Image modality: ImageFolder data (ImageNet-1K layout), the paper's transforms, an identity adapter (C' = 3)."""
