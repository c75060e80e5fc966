"""The network as plain ``nn.Module``s: the frozen VGG16 backbone, the heads, and ``AgeNet`` that joins them."""
