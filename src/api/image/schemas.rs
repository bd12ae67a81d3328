//! The JSON schemas glance publishes under /v2/schemas, which clients read to validate images.

use super::*;

pub(super) fn image_schema() -> Value {
    let nullable_str = |desc: &str| json!({"type": ["null", "string"], "description": desc});
    let read_only = |t: Value, desc: &str| json!({"type": t, "readOnly": true, "description": desc});
    json!({
        "name": "image",
        "additionalProperties": {"type": "string"},
        "properties": {
            "id": {"type": "string", "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$",
                   "description": "An identifier for the image"},
            "name": {"type": ["null", "string"], "maxLength": 255, "description": "Descriptive name for the image"},
            "status": read_only(json!("string"), "Status of the image"),
            "visibility": {"type": "string", "enum": VISIBILITIES, "description": "Scope of image accessibility"},
            "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
            "checksum": read_only(json!(["null", "string"]), "md5 hash of image contents."),
            "os_hash_algo": read_only(json!(["null", "string"]), "Algorithm to calculate the os_hash_value"),
            "os_hash_value": read_only(json!(["null", "string"]), "Hexdigest of the image contents"),
            "owner": nullable_str("Owner of the image"),
            "size": read_only(json!(["null", "integer"]), "Size of image file in bytes"),
            "virtual_size": read_only(json!(["null", "integer"]), "Virtual size of image in bytes"),
            "container_format": {"type": ["null", "string"], "enum": CONTAINER_FORMATS.iter().map(|s| json!(s)).chain([Value::Null]).collect::<Vec<_>>(),
                                 "description": "Format of the container"},
            "disk_format": {"type": ["null", "string"], "enum": DISK_FORMATS.iter().map(|s| json!(s)).chain([Value::Null]).collect::<Vec<_>>(),
                            "description": "Format of the disk"},
            "created_at": read_only(json!("string"), "Date and time of image registration"),
            "updated_at": read_only(json!("string"), "Date and time of the last image modification"),
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}, "description": "List of strings related to the image"},
            "self": read_only(json!("string"), "An image self url"),
            "file": read_only(json!("string"), "An image file url"),
            "schema": read_only(json!("string"), "An image schema url"),
            "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot image."},
            "min_disk": {"type": "integer", "description": "Amount of disk space (in GB) required to boot image."},
            "kernel_id": {"type": ["null", "string"], "description": "ID of image stored in Glance that should be used as the kernel when booting an AMI-style image.", "is_base": false},
            "ramdisk_id": {"type": ["null", "string"], "description": "ID of image stored in Glance that should be used as the ramdisk when booting an AMI-style image.", "is_base": false},
        },
        "links": [
            {"rel": "self", "href": "{self}"},
            {"rel": "enclosure", "href": "{file}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    })
}

pub(super) fn images_schema() -> Value {
    json!({
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema()},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    })
}

pub(super) fn member_schema() -> Value {
    json!({
        "name": "member",
        "properties": {
            "created_at": {"type": "string", "description": "Date and time of image member creation"},
            "image_id": {"type": "string", "description": "An identifier for the image"},
            "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
            "schema": {"type": "string", "readOnly": true},
            "status": {"type": "string", "enum": MemberStatus::NAMES, "description": "The status of this image member"},
            "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
        },
    })
}

pub(super) fn members_schema() -> Value {
    json!({
        "name": "members",
        "properties": {"members": {"type": "array", "items": member_schema()}, "schema": {"type": "string"}},
        "links": [{"rel": "schema", "href": "{schema}"}],
    })
}
