;; The types of the `inspect` interface of wit/tarpool.wit, exported at the
;; component's top level as an interface export needs them, and its two
;; functions lifted from a core instance `$i` (memory `mem`, `realloc`,
;; exports `check-image` and `check-entries`): the common part of the
;; inspect components the tests write as text.
            (type $rc0 (record (field "env" (list string)) (field "entrypoint" (list string))
                (field "cmd" (list string)) (field "working-dir" string) (field "user" string)))
            (export $rc "runtime-config" (type $rc0))
            (type $ii0 (record (field "name" string) (field "format" string) (field "layers" u32)
                (field "config" (option $rc))))
            (export $ii "image-info" (type $ii0))
            (type $et0 (enum "regular" "directory" "symlink" "hardlink" "char-device"
                "block-device" "fifo" "whiteout" "opaque"))
            (export $et "entry-type" (type $et0))
            (type $eh0 (record (field "path" string) (field "kind" $et) (field "mode" u32)
                (field "uid" u32) (field "gid" u32) (field "size" u64)
                (field "link" (option string)) (field "xattr-names" (list string))))
            (export $eh "entry-header" (type $eh0))
            (type $v0 (enum "allow" "deny" "skip"))
            (export $v "verdict" (type $v0))
            (type $a0 (record (field "verdict" $v) (field "rule" string) (field "reason" string)))
            (export $a "answer" (type $a0))
            (type $ea0 (record (field "index" u32) (field "answer" $a)))
            (export $ea "entry-answer" (type $ea0))
            (func $ci (param "image" $ii) (result (list $a))
                (canon lift (core func $i "check-image") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
            (func $ce (param "layer" u32) (param "entries" (list $eh)) (result (list $ea))
                (canon lift (core func $i "check-entries") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
