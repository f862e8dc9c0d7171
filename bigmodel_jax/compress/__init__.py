"""Model compression: post-training int8 weight quantization (`quantize`) and `--mode=compress`
(`report`), which writes compressed variants of a trained run as ordinary workdirs and measures
them next to the original."""
