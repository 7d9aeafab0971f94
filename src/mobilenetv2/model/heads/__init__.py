"""Task heads on the MobileNetV2 backbone (paper sections 6.2 and 6.3)."""
