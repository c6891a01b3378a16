//! Compiles the admin service with protox (pure Rust): the build needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos");
    let descriptors = protox::compile(["tether/admin/v1/admin.proto"], ["protos"])?;
    tonic_prost_build::configure()
        // Messages convert to and from the JSON API's shapes through serde
        // (`convert`): the field names are the same; absent means default.
        .type_attribute(
            ".",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
