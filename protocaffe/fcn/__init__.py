"""The FCN workflow around a segmentation net: net surgery (`surgery`), mean-IoU scoring
(`score`) and a small synthetic segmentation set to train a demo on (`synthetic`)."""
