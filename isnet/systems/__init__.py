"""The trainable systems: the ISNet module (:mod:`isnet.systems.isnet`) and the comparison systems of the
paper (Appendix B.1), their networks, losses and training modules, named in :mod:`isnet.systems.registry`."""
