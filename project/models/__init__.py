"""Plain ``nn.Module`` components used by :class:`project.lit_classifier_main.LitClassifier`."""
