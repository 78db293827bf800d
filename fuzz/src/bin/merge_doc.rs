fn main() {
    afl::fuzz!(|data: &[u8]| shardfs_fuzz::merge_doc(data));
}
