/*
 * quiet_main.c -- owns the do-nothing program used to check that merely
 * loading rdna1shim (LD_PRELOAD) into a process that never touches MIOpen or
 * HIP has no visible effect: it links nothing special and exits 0.
 */
int main(void) { return 0; }
