//! `portcullis scan …`: import a scanner's report, get one image's result, list results with
//! their counts per severity, delete a result. Reports are parsed by the control plane, so
//! what it refuses is refused the same way for grpcurl and the CLI.

use anyhow::{Result, anyhow};
use tonic::Code;

use portcullis_proto::v1::{
    DeleteImageScanRequest, GetImageScanRequest, ImageScan, ImportReportRequest,
    ListImageScansRequest,
};

use super::{collect_pages, rpc};
use crate::{
    args::{Connection, ScanCommand},
    client,
    output::{self, Table},
};

pub async fn run(command: ScanCommand, connection: &Connection) -> Result<()> {
    // Read the report before connecting: a missing file is reported even with no server.
    let report = match &command {
        ScanCommand::Import { file, .. } => read_report(file)?,
        _ => Vec::new(),
    };
    let mut clients = client::connect(connection).await?;
    match command {
        ScanCommand::Import {
            file,
            format,
            image,
            output,
        } => {
            let size = report.len();
            let request = ImportReportRequest {
                format: format.map(|f| f.name().to_owned()).unwrap_or_default(),
                report: report.into(),
                image: image.unwrap_or_default(),
            };
            let scan = match clients.scans.import_report(request).await {
                // tonic's own refusal of a request over its decoding limit.
                Err(status)
                    if matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange)
                        && status.message().contains("too large") =>
                {
                    return Err(anyhow!(
                        "{:?}: {}: the report ({size} bytes) is over the control \
                         plane's report size limit (--max-report-bytes): {}",
                        status.code(),
                        file.display(),
                        status.message()
                    ));
                }
                result => rpc(result)?,
            };
            output::print(output, &scan, || scan_table(std::slice::from_ref(&scan)))
        }
        ScanCommand::Get { image, output } => {
            let scan = rpc(clients
                .scans
                .get_image_scan(GetImageScanRequest { image })
                .await)?;
            output::print(output, &scan, || scan_table(std::slice::from_ref(&scan)))
        }
        ScanCommand::List {
            repository,
            min_severity,
            malware,
            vulnerability,
            output,
        } => {
            let scans = collect_pages(0, |page_size, page_token| {
                let mut client = clients.scans.clone();
                let request = ListImageScansRequest {
                    repository: repository.clone().unwrap_or_default(),
                    min_severity: min_severity.clone().unwrap_or_default(),
                    has_malware: malware.then_some(true),
                    vulnerability: vulnerability.clone().unwrap_or_default(),
                    page_size,
                    page_token,
                };
                async move {
                    let page = rpc(client.list_image_scans(request).await)?;
                    Ok((page.scans, page.next_page_token))
                }
            })
            .await?;
            output::print(output, &scans, || scan_table(&scans))
        }
        ScanCommand::Delete { image } => {
            let response = rpc(clients
                .scans
                .delete_image_scan(DeleteImageScanRequest { image })
                .await)?;
            println!(
                "scan {:?} deleted at revision {}",
                response.id, response.revision
            );
            Ok(())
        }
    }
}

/// The report's bytes: a regular file or `-`, no more than any control plane accepts (each
/// refuses what is over its own `--max-report-bytes`).
fn read_report(path: &std::path::Path) -> Result<Vec<u8>> {
    crate::files::read_bounded(
        path,
        portcullis_scan::MAX_REPORT_BYTES_CEILING as u64,
        "report",
    )
}

/// How a scan's image reads in a table: `repository:tag`, else `repository@digest` (or the
/// digest alone).
fn image_name(scan: &ImageScan) -> String {
    let identity = scan.image.clone().unwrap_or_default();
    match (identity.tags.first(), identity.digests.first()) {
        (Some(tag), _) => format!("{}:{tag}", identity.repository),
        // An image known only by its digest (scanned from an OCI layout) shows the digest.
        (None, Some(digest)) if identity.repository.is_empty() => digest.clone(),
        (None, Some(digest)) => format!("{}@{digest}", identity.repository),
        (None, None) => identity.repository,
    }
}

fn scan_table(scans: &[ImageScan]) -> Table {
    let mut table = Table::new(vec![
        "IMAGE", "SCANNER", "CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN", "MALWARE", "SCANNED",
    ]);
    for scan in scans {
        let counts = scan.counts.unwrap_or_default();
        let scanner = scan.scanner.clone().unwrap_or_default();
        table.row(vec![
            image_name(scan),
            match scanner.version.as_str() {
                "" => scanner.name,
                version => format!("{} {version}", scanner.name),
            },
            counts.critical.to_string(),
            counts.high.to_string(),
            counts.medium.to_string(),
            counts.low.to_string(),
            counts.unknown.to_string(),
            scan.malicious_files.len().to_string(),
            match scan.scanned_at.as_str() {
                "" => "-".into(),
                at => at.to_owned(),
            },
        ]);
    }
    table
}
