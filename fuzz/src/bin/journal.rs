fn main() {
    afl::fuzz!(|data: &[u8]| shardfs_fuzz::journal(data));
}
