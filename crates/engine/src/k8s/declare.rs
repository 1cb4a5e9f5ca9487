//! One declaration per Kubernetes type: `k8s_type!` writes the struct, its serde reader and its
//! direct reader (`fast::Read`) from a single list of JSON names and fields, so a field cannot
//! be read by one reader and skipped by the other (which, on the webhook's hot path, would read
//! as its default: an admission bypass). Each field's direct reading follows from its Rust type,
//! so a type the direct reader cannot read does not compile.
//!
//! Every field reads absent or `null` as its default (as the API server does for non-pointer
//! fields; an `Option` reads `null` as `None`), unknown fields are ignored, and a repeated
//! field is an error (serde) or left to serde (the direct reader).

macro_rules! k8s_type {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $json:literal => $field_vis:vis $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
        #[serde(default)]
        $vis struct $name {
            $(
                $(#[$field_meta])*
                #[serde(rename = $json, deserialize_with = "crate::k8s::nullable")]
                $field_vis $field: $ty,
            )*
        }

        // The direct reader marks the fields it has seen in a `u32`.
        const _: () = assert!(<[&str]>::len(&[$($json),*]) <= 32, "at most 32 fields per type");

        impl crate::k8s::fast::Read for $name {
            // A type without fields reads none of these.
            #[allow(unused_variables, unused_mut)]
            fn read(r: &mut crate::k8s::fast::Reader<'_>, out: &mut Self) -> Option<()> {
                r.fields(|r, key, seen| {
                    let mut bit = 0;
                    $(
                        if key == $json.as_bytes() {
                            return r.once(seen, bit, |r| r.field(&mut out.$field));
                        }
                        bit += 1;
                    )*
                    let _ = bit;
                    r.skip_value()
                })
            }
        }
    };
}
