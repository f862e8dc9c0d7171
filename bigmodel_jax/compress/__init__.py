"""Model compression: post-training int8 weight quantization (`quantize`), magnitude pruning
during training (`prune`), and `--mode=compress` (`report`), which writes compressed variants of a
trained run as ordinary workdirs and measures them next to the original."""
