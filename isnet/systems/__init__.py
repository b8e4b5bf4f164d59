"""The comparison systems of the paper (Appendix B.1): networks, losses and training modules."""
