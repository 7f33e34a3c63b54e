//! PostGIS helpers: `st_asgeojson`, `st_astext`, `st_x`, `st_y` (SYNC_RULES.md §5.3).
//!
//! Input is WKB or EWKB, as a blob or as hex text (PostGIS's text output). Parsing and output follow
//! the `wkx` library the reference uses: ISO (1000/2000/3000-offset) and EWKB (flag bit) dimensions,
//! an optional EWKB SRID, WKT like `POINT(1 2)` / `LINESTRING(1 2,3 4)` / `POINT Z (1 2 3)`, GeoJSON
//! with reals always written with a fraction (`[1.0,2.0]`), numbers in JavaScript form otherwise.

use super::arg;
use super::text::hex_value;
use crate::compat::Compatibility;
use crate::error::EvalError;
use crate::value::{SqliteValue, js_number_to_string};

/// Nesting limit for collections, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Coord {
    x: f64,
    y: f64,
    z: Option<f64>,
    m: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Point(Coord),
    LineString(Vec<Coord>),
    /// Exterior ring first; an empty list is `POLYGON EMPTY`.
    Polygon(Vec<Vec<Coord>>),
    MultiPoint(Vec<Geometry>),
    MultiLineString(Vec<Geometry>),
    MultiPolygon(Vec<Geometry>),
    GeometryCollection(Vec<Geometry>),
}

#[derive(Debug, Clone, PartialEq)]
struct Geometry {
    shape: Shape,
    has_z: bool,
    has_m: bool,
}

fn truncated() -> EvalError {
    EvalError::new("Invalid geometry: unexpected end of WKB data")
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    /// Shared by nested geometries, like wkx's single reader: a child's byte order sticks.
    big_endian: bool,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], EvalError> {
        let bytes = self.b.get(self.pos..self.pos + N).ok_or_else(truncated)?;
        self.pos += N;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, EvalError> {
        let b = self.take::<4>()?;
        Ok(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn f64(&mut self) -> Result<f64, EvalError> {
        let b = self.take::<8>()?;
        Ok(if self.big_endian {
            f64::from_be_bytes(b)
        } else {
            f64::from_le_bytes(b)
        })
    }

    fn coord(&mut self, has_z: bool, has_m: bool) -> Result<Coord, EvalError> {
        let x = self.f64()?;
        let y = self.f64()?;
        let z = if has_z { Some(self.f64()?) } else { None };
        let m = if has_m { Some(self.f64()?) } else { None };
        Ok(Coord { x, y, z, m })
    }

    fn coords(&mut self, has_z: bool, has_m: bool) -> Result<Vec<Coord>, EvalError> {
        let count = self.u32()?;
        // No pre-allocation from the untrusted count: reading stops at the end of the data.
        let mut out = Vec::new();
        for _ in 0..count {
            out.push(self.coord(has_z, has_m)?);
        }
        Ok(out)
    }

    fn children(&mut self, parent_ewkb: bool, depth: usize) -> Result<Vec<Geometry>, EvalError> {
        let count = self.u32()?;
        let mut out = Vec::new();
        for _ in 0..count {
            out.push(self.geometry(parent_ewkb, depth + 1)?);
        }
        Ok(out)
    }

    fn geometry(&mut self, parent_ewkb: bool, depth: usize) -> Result<Geometry, EvalError> {
        if depth > MAX_DEPTH {
            return Err(EvalError::new("Invalid geometry: nested too deeply"));
        }
        // wkx: a zero byte-order byte means big endian, anything else little endian.
        self.big_endian = self.take::<1>()?[0] == 0;
        let wkb_type = self.u32()?;
        let is_ewkb = wkb_type & 0xE000_0000 != 0;
        if wkb_type & 0x2000_0000 != 0 {
            let _srid = self.u32()?;
        }
        let (geometry_type, has_z, has_m) = if !is_ewkb && !parent_ewkb {
            match wkb_type {
                1000..=1999 => (wkb_type - 1000, true, false),
                2000..=2999 => (wkb_type - 2000, false, true),
                3000..=3999 => (wkb_type - 3000, true, true),
                t => (t, false, false),
            }
        } else {
            (
                wkb_type & 0xF,
                wkb_type & 0x8000_0000 != 0,
                wkb_type & 0x4000_0000 != 0,
            )
        };
        let ewkb = is_ewkb || parent_ewkb;
        let shape = match geometry_type {
            1 => Shape::Point(self.coord(has_z, has_m)?),
            2 => Shape::LineString(self.coords(has_z, has_m)?),
            3 => {
                let rings = self.u32()?;
                let mut out = Vec::new();
                for _ in 0..rings {
                    out.push(self.coords(has_z, has_m)?);
                }
                Shape::Polygon(out)
            }
            4 => Shape::MultiPoint(self.children(ewkb, depth)?),
            5 => Shape::MultiLineString(self.children(ewkb, depth)?),
            6 => Shape::MultiPolygon(self.children(ewkb, depth)?),
            7 => Shape::GeometryCollection(self.children(ewkb, depth)?),
            t => return Err(EvalError::new(format!("GeometryType {t} not supported"))),
        };
        Ok(Geometry { shape, has_z, has_m })
    }
}

/// Decodes hex like Node's `Buffer.from(text, 'hex')`: stops at the first pair that is not hex.
fn decode_hex(text: &str) -> Vec<u8> {
    text.as_bytes()
        .chunks_exact(2)
        .map_while(|pair| Some((hex_value(pair[0])? << 4) | hex_value(pair[1])?))
        .collect()
}

/// NULL (and non-text, non-blob values) give `None`; malformed WKB is a row error.
fn parse_geometry(v: &SqliteValue) -> Result<Option<Geometry>, EvalError> {
    let decoded;
    let bytes: &[u8] = match v {
        SqliteValue::Blob(b) => b,
        SqliteValue::Text(s) => {
            decoded = decode_hex(s);
            &decoded
        }
        _ => return Ok(None),
    };
    let mut reader = Reader {
        b: bytes,
        pos: 0,
        big_endian: false,
    };
    reader.geometry(false, 0).map(Some)
}

impl Geometry {
    fn wkt_type(&self, name: &str, empty: bool) -> String {
        let mut out = String::from(name);
        out.push_str(match (self.has_z, self.has_m) {
            (true, true) => " ZM ",
            (true, false) => " Z ",
            (false, true) => " M ",
            (false, false) if empty => " ",
            (false, false) => "",
        });
        if empty {
            out.push_str("EMPTY");
        }
        out
    }

    fn wkt_coord(&self, c: &Coord, out: &mut String) {
        out.push_str(&js_number_to_string(c.x));
        out.push(' ');
        out.push_str(&js_number_to_string(c.y));
        // wkx prints JavaScript `undefined` when a flag is set but the child had no such value.
        for (flag, value) in [(self.has_z, c.z), (self.has_m, c.m)] {
            if flag {
                out.push(' ');
                out.push_str(&value.map_or_else(|| String::from("undefined"), js_number_to_string));
            }
        }
    }

    fn wkt_coords(&self, coords: &[Coord], out: &mut String) {
        out.push('(');
        for (i, c) in coords.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.wkt_coord(c, out);
        }
        out.push(')');
    }

    /// The parenthesised body of a LineString or Polygon (used inside Multi* too).
    fn inner_wkt(&self, out: &mut String) {
        match &self.shape {
            Shape::LineString(points) => self.wkt_coords(points, out),
            Shape::Polygon(rings) => {
                out.push('(');
                for (i, ring) in rings.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.wkt_coords(ring, out);
                }
                out.push(')');
            }
            _ => out.push_str(&self.to_wkt()),
        }
    }

    fn to_wkt(&self) -> String {
        let (name, empty) = match &self.shape {
            Shape::Point(_) => ("POINT", false),
            Shape::LineString(p) => ("LINESTRING", p.is_empty()),
            Shape::Polygon(r) => ("POLYGON", r.first().is_none_or(Vec::is_empty)),
            Shape::MultiPoint(g) => ("MULTIPOINT", g.is_empty()),
            Shape::MultiLineString(g) => ("MULTILINESTRING", g.is_empty()),
            Shape::MultiPolygon(g) => ("MULTIPOLYGON", g.is_empty()),
            Shape::GeometryCollection(g) => ("GEOMETRYCOLLECTION", g.is_empty()),
        };
        let mut out = self.wkt_type(name, empty);
        if empty {
            return out;
        }
        match &self.shape {
            Shape::Point(c) => self.wkt_coords(std::slice::from_ref(c), &mut out),
            Shape::LineString(_) | Shape::Polygon(_) => self.inner_wkt(&mut out),
            Shape::MultiPoint(points) => {
                // The parent's dimensions decide which ordinates are printed.
                let coords: Vec<Coord> = points.iter().filter_map(Geometry::point).collect();
                self.wkt_coords(&coords, &mut out);
            }
            Shape::MultiLineString(children) | Shape::MultiPolygon(children) => {
                out.push('(');
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    child.inner_wkt(&mut out);
                }
                out.push(')');
            }
            Shape::GeometryCollection(children) => {
                out.push('(');
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&child.to_wkt());
                }
                out.push(')');
            }
        }
        out
    }

    fn point(&self) -> Option<Coord> {
        match &self.shape {
            Shape::Point(c) => Some(*c),
            _ => None,
        }
    }

    fn geojson_position(&self, c: &Coord, out: &mut String) {
        out.push('[');
        write_geojson_number(c.x, out);
        out.push(',');
        write_geojson_number(c.y, out);
        if self.has_z {
            out.push(',');
            match c.z {
                Some(z) => write_geojson_number(z, out),
                None => out.push_str("null"),
            }
        }
        out.push(']');
    }

    fn geojson_positions(&self, coords: &[Coord], out: &mut String) {
        out.push('[');
        for (i, c) in coords.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.geojson_position(c, out);
        }
        out.push(']');
    }

    /// The `coordinates` member of this geometry (not for collections).
    fn geojson_coordinates(&self, out: &mut String) {
        match &self.shape {
            Shape::Point(c) => self.geojson_position(c, out),
            Shape::LineString(points) => self.geojson_positions(points, out),
            Shape::Polygon(rings) => {
                out.push('[');
                // wkx drops an empty exterior ring but keeps interior rings.
                let kept = rings.iter().enumerate().filter(|(i, r)| *i > 0 || !r.is_empty());
                for (n, (_, ring)) in kept.enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    self.geojson_positions(ring, out);
                }
                out.push(']');
            }
            Shape::MultiPoint(children)
            | Shape::MultiLineString(children)
            | Shape::MultiPolygon(children) => {
                out.push('[');
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    child.geojson_coordinates(out);
                }
                out.push(']');
            }
            Shape::GeometryCollection(_) => out.push_str("[]"),
        }
    }

    fn to_geojson(&self, out: &mut String) {
        let name = match &self.shape {
            Shape::Point(_) => "Point",
            Shape::LineString(_) => "LineString",
            Shape::Polygon(_) => "Polygon",
            Shape::MultiPoint(_) => "MultiPoint",
            Shape::MultiLineString(_) => "MultiLineString",
            Shape::MultiPolygon(_) => "MultiPolygon",
            Shape::GeometryCollection(_) => "GeometryCollection",
        };
        out.push_str("{\"type\":\"");
        out.push_str(name);
        if let Shape::GeometryCollection(children) = &self.shape {
            out.push_str("\",\"geometries\":[");
            for (i, child) in children.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                child.to_geojson(out);
            }
            out.push_str("]}");
        } else {
            out.push_str("\",\"coordinates\":");
            self.geojson_coordinates(out);
            out.push('}');
        }
    }
}

/// A JavaScript number as the reference's JSON writer prints it: `.0` added to whole numbers.
fn write_geojson_number(f: f64, out: &mut String) {
    let s = js_number_to_string(f);
    let whole = s.bytes().all(|c| c.is_ascii_digit() || c == b'-');
    out.push_str(&s);
    if whole {
        out.push_str(".0");
    }
}

/// `st_asgeojson(g)`: GeoJSON text.
pub(super) fn st_asgeojson(args: &[SqliteValue], _: &Compatibility) -> Result<SqliteValue, EvalError> {
    Ok(parse_geometry(arg(args, 0))?.map_or(SqliteValue::Null, |g| {
        let mut out = String::new();
        g.to_geojson(&mut out);
        SqliteValue::from(out)
    }))
}

/// `st_astext(g)`: WKT text.
pub(super) fn st_astext(args: &[SqliteValue], _: &Compatibility) -> Result<SqliteValue, EvalError> {
    Ok(parse_geometry(arg(args, 0))?.map_or(SqliteValue::Null, |g| SqliteValue::from(g.to_wkt())))
}

/// `st_x(g)`: X of a Point as REAL; NULL for other geometries.
pub(super) fn st_x(args: &[SqliteValue], _: &Compatibility) -> Result<SqliteValue, EvalError> {
    Ok(parse_geometry(arg(args, 0))?
        .and_then(|g| g.point())
        .map_or(SqliteValue::Null, |c| SqliteValue::Real(c.x)))
}

/// `st_y(g)`: Y of a Point as REAL; NULL for other geometries.
pub(super) fn st_y(args: &[SqliteValue], _: &Compatibility) -> Result<SqliteValue, EvalError> {
    Ok(parse_geometry(arg(args, 0))?
        .and_then(|g| g.point())
        .map_or(SqliteValue::Null, |c| SqliteValue::Real(c.y)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::test_values::{N, t};
    use proptest::prelude::*;

    const POINT_EWKB: &str = "0101000020E6100000000000000000F03F0000000000000040";

    fn call(
        f: fn(&[SqliteValue], &Compatibility) -> Result<SqliteValue, EvalError>,
        v: SqliteValue,
    ) -> SqliteValue {
        f(&[v], &Compatibility::default()).unwrap()
    }

    /// Little-endian WKB builder.
    #[derive(Default)]
    struct Wkb(Vec<u8>);
    impl Wkb {
        fn header(mut self, ty: u32) -> Self {
            self.0.push(1);
            self.0.extend(ty.to_le_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn coords(mut self, cs: &[f64]) -> Self {
            for c in cs {
                self.0.extend(c.to_le_bytes());
            }
            self
        }
        fn raw(mut self, other: Wkb) -> Self {
            self.0.extend(other.0);
            self
        }
        fn blob(self) -> SqliteValue {
            SqliteValue::from(self.0)
        }
    }

    fn point(x: f64, y: f64) -> Wkb {
        Wkb::default().header(1).coords(&[x, y])
    }
    fn line(cs: &[f64]) -> Wkb {
        let n = u32::try_from(cs.len() / 2).unwrap();
        Wkb::default().header(2).u32(n).coords(cs)
    }
    fn polygon(rings: &[&[f64]]) -> Wkb {
        let mut w = Wkb::default().header(3).u32(u32::try_from(rings.len()).unwrap());
        for ring in rings {
            w = w.u32(u32::try_from(ring.len() / 2).unwrap()).coords(ring);
        }
        w
    }

    #[test]
    fn ewkb_point_from_hex_text() {
        assert_eq!(call(st_astext, t(POINT_EWKB)), t("POINT(1 2)"));
        assert_eq!(
            call(st_asgeojson, t(POINT_EWKB)),
            t(r#"{"type":"Point","coordinates":[1.0,2.0]}"#)
        );
        assert_eq!(call(st_x, t(POINT_EWKB)), SqliteValue::Real(1.0));
        assert_eq!(call(st_y, t(POINT_EWKB)), SqliteValue::Real(2.0));
        assert_eq!(call(st_astext, t(&POINT_EWKB.to_lowercase())), t("POINT(1 2)"));
    }

    #[test]
    fn null_and_non_geometry_values() {
        for f in [st_astext, st_asgeojson, st_x, st_y] {
            assert_eq!(call(f, N), N);
            assert_eq!(call(f, SqliteValue::Integer(1)), N);
            assert_eq!(call(f, SqliteValue::Real(1.0)), N);
            assert!(f(&[t("")], &Compatibility::default()).is_err());
            assert!(f(&[t("zz")], &Compatibility::default()).is_err());
            assert!(f(&[t("0101000000")], &Compatibility::default()).is_err());
        }
        let unknown = Wkb::default().header(8).blob();
        assert_eq!(
            st_astext(&[unknown], &Compatibility::default())
                .unwrap_err()
                .message,
            "GeometryType 8 not supported"
        );
    }

    #[test]
    fn points_as_blobs_and_big_endian() {
        let p = point(1.5, -2.25).blob();
        assert_eq!(call(st_astext, p.clone()), t("POINT(1.5 -2.25)"));
        assert_eq!(
            call(st_asgeojson, p.clone()),
            t(r#"{"type":"Point","coordinates":[1.5,-2.25]}"#)
        );
        assert_eq!(call(st_x, p.clone()), SqliteValue::Real(1.5));
        assert_eq!(call(st_y, p), SqliteValue::Real(-2.25));
        // Big endian: byte order 0.
        let mut be = vec![0u8];
        be.extend(1u32.to_be_bytes());
        be.extend(3.0f64.to_be_bytes());
        be.extend(1e21f64.to_be_bytes());
        let be = SqliteValue::from(be);
        assert_eq!(call(st_astext, be.clone()), t("POINT(3 1e+21)"));
        assert_eq!(
            call(st_asgeojson, be),
            t(r#"{"type":"Point","coordinates":[3.0,1e+21]}"#)
        );
    }

    #[test]
    fn dimensions_iso_and_ewkb() {
        let iso_z = Wkb::default().header(1001).coords(&[1.0, 2.0, 3.0]).blob();
        assert_eq!(call(st_astext, iso_z.clone()), t("POINT Z (1 2 3)"));
        assert_eq!(
            call(st_asgeojson, iso_z),
            t(r#"{"type":"Point","coordinates":[1.0,2.0,3.0]}"#)
        );
        let iso_m = Wkb::default().header(2001).coords(&[1.0, 2.0, 4.0]).blob();
        assert_eq!(call(st_astext, iso_m.clone()), t("POINT M (1 2 4)"));
        assert_eq!(
            call(st_asgeojson, iso_m),
            t(r#"{"type":"Point","coordinates":[1.0,2.0]}"#)
        );
        let iso_zm = Wkb::default().header(3001).coords(&[1.0, 2.0, 3.0, 4.0]).blob();
        assert_eq!(call(st_astext, iso_zm), t("POINT ZM (1 2 3 4)"));
        let ewkb_z_srid = Wkb::default()
            .header(0xA000_0001)
            .u32(4326)
            .coords(&[1.0, 2.0, 3.0])
            .blob();
        assert_eq!(call(st_astext, ewkb_z_srid.clone()), t("POINT Z (1 2 3)"));
        assert_eq!(call(st_x, ewkb_z_srid), SqliteValue::Real(1.0));
    }

    #[test]
    fn lines_and_polygons() {
        let l = line(&[0.0, 0.0, 1.0, 1.5]).blob();
        assert_eq!(call(st_astext, l.clone()), t("LINESTRING(0 0,1 1.5)"));
        assert_eq!(
            call(st_asgeojson, l.clone()),
            t(r#"{"type":"LineString","coordinates":[[0.0,0.0],[1.0,1.5]]}"#)
        );
        assert_eq!(call(st_x, l), N);
        assert_eq!(call(st_astext, line(&[]).blob()), t("LINESTRING EMPTY"));
        let poly = polygon(&[
            &[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 0.0],
            &[1.0, 1.0, 2.0, 1.0, 1.0, 1.0],
        ])
        .blob();
        assert_eq!(
            call(st_astext, poly.clone()),
            t("POLYGON((0 0,4 0,4 4,0 0),(1 1,2 1,1 1))")
        );
        assert_eq!(
            call(st_asgeojson, poly.clone()),
            t(
                r#"{"type":"Polygon","coordinates":[[[0.0,0.0],[4.0,0.0],[4.0,4.0],[0.0,0.0]],[[1.0,1.0],[2.0,1.0],[1.0,1.0]]]}"#
            )
        );
        assert_eq!(call(st_y, poly), N);
        assert_eq!(call(st_astext, polygon(&[]).blob()), t("POLYGON EMPTY"));
        assert_eq!(
            call(st_asgeojson, polygon(&[]).blob()),
            t(r#"{"type":"Polygon","coordinates":[]}"#)
        );
    }

    #[test]
    fn multi_geometries_and_collections() {
        let mp = Wkb::default()
            .header(4)
            .u32(2)
            .raw(point(1.0, 2.0))
            .raw(point(3.0, 4.0))
            .blob();
        assert_eq!(call(st_astext, mp.clone()), t("MULTIPOINT(1 2,3 4)"));
        assert_eq!(
            call(st_asgeojson, mp.clone()),
            t(r#"{"type":"MultiPoint","coordinates":[[1.0,2.0],[3.0,4.0]]}"#)
        );
        assert_eq!(call(st_x, mp), N);
        let ml = Wkb::default()
            .header(5)
            .u32(2)
            .raw(line(&[0.0, 0.0, 1.0, 1.0]))
            .raw(line(&[2.0, 2.0, 3.0, 3.0]));
        assert_eq!(
            call(st_astext, ml.blob()),
            t("MULTILINESTRING((0 0,1 1),(2 2,3 3))")
        );
        let mpoly = Wkb::default()
            .header(6)
            .u32(1)
            .raw(polygon(&[&[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]]));
        let mpoly = mpoly.blob();
        assert_eq!(call(st_astext, mpoly.clone()), t("MULTIPOLYGON(((0 0,1 0,0 0)))"));
        assert_eq!(
            call(st_asgeojson, mpoly),
            t(r#"{"type":"MultiPolygon","coordinates":[[[[0.0,0.0],[1.0,0.0],[0.0,0.0]]]]}"#)
        );
        let gc = Wkb::default()
            .header(7)
            .u32(2)
            .raw(point(1.0, 2.0))
            .raw(line(&[0.0, 0.0, 1.0, 1.0]))
            .blob();
        assert_eq!(
            call(st_astext, gc.clone()),
            t("GEOMETRYCOLLECTION(POINT(1 2),LINESTRING(0 0,1 1))")
        );
        assert_eq!(
            call(st_asgeojson, gc),
            t(
                r#"{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1.0,2.0]},{"type":"LineString","coordinates":[[0.0,0.0],[1.0,1.0]]}]}"#
            )
        );
        assert_eq!(
            call(st_astext, Wkb::default().header(4).u32(0).blob()),
            t("MULTIPOINT EMPTY")
        );
        assert_eq!(
            call(st_asgeojson, Wkb::default().header(7).u32(0).blob()),
            t(r#"{"type":"GeometryCollection","geometries":[]}"#)
        );
    }

    #[test]
    fn hex_decoding_stops_at_invalid_pairs() {
        assert_eq!(decode_hex("0aFFzz01"), vec![0x0a, 0xff]);
        assert_eq!(decode_hex("abc"), vec![0xab]);
        assert_eq!(decode_hex(""), Vec::<u8>::new());
        // Trailing data after a complete geometry is ignored, as wkx does.
        assert_eq!(call(st_astext, t(&format!("{POINT_EWKB}00zz"))), t("POINT(1 2)"));
    }

    #[test]
    fn hostile_input_is_an_error_not_a_crash() {
        // A huge count with no data behind it.
        let huge = Wkb::default().header(2).u32(u32::MAX).blob();
        assert!(st_astext(&[huge], &Compatibility::default()).is_err());
        // Deeply nested collections.
        let mut nested = Vec::new();
        for _ in 0..1000 {
            nested.extend([1u8, 7, 0, 0, 0, 1, 0, 0, 0]);
        }
        assert!(st_astext(&[SqliteValue::from(nested)], &Compatibility::default()).is_err());
    }

    proptest! {
        #[test]
        fn geo_functions_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), s in "[0-9A-Fa-f]{0,80}") {
            let c = Compatibility::default();
            for v in [SqliteValue::from(bytes.clone()), t(&s)] {
                for f in [st_astext, st_asgeojson, st_x, st_y] {
                    let _ = f(std::slice::from_ref(&v), &c);
                }
            }
        }

        #[test]
        fn point_coordinates_round_trip(x in any::<f64>(), y in any::<f64>()) {
            let p = point(x, y).blob();
            let got_x = call(st_x, p.clone());
            let got_y = call(st_y, p);
            prop_assert_eq!(got_x, SqliteValue::Real(x));
            prop_assert_eq!(got_y, SqliteValue::Real(y));
        }
    }
}
