package testimages

// go-digest finds its hash functions through crypto's registry; a program
// that imports nothing else of crypto/sha256 would panic building digests.
import _ "crypto/sha256"
