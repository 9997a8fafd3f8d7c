"""Judging generators: metric functions (``scores``), the domain feature network
(``featurenet``) and the feature extractors built on it or on InceptionV3 (``features``)."""
