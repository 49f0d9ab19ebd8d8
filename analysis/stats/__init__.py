"""The statistics under every measurement: CCA-family distances, the shared resampling plan, k-means, frequency buckets, paired distances and the verdict rules."""
