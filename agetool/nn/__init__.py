"""Networks: LATS generator and discriminator, DeepLab face parser. No training code here."""
