//! Noise schedulers, one file each, behind one trait. (to be written)
