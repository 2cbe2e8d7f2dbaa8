#!/usr/bin/perl
# Builds small MaxMind DB files for tokgate's tests: make_test_mmdb.pl OUTDIR
#
# Writes OUTDIR/country.mmdb (database_type "GeoLite2-Country": country.iso_code, or only
# registered_country.iso_code where noted), OUTDIR/asn.mmdb ("GeoLite2-ASN":
# autonomous_system_number and autonomous_system_organization) and OUTDIR/combined.mmdb
# ("tokgate-Test-Combined": both kinds of fields in one record). All three are IPv6 trees,
# record size 24, with IPv4 aliased into them (::ffff:0:0/96 and friends), so IPv4 and
# IPv4-mapped lookups both work.
#
# The networks (tests rely on exactly these; anything else is unknown, e.g. 127.0.0.1, 8.8.8.8):
#
#   network            country                 ASN    organisation
#   198.51.100.0/24    CN                      37963  Hangzhou Alibaba Advertising Co.,Ltd.
#   203.0.113.0/24     US                      20940  Akamai International B.V.
#   192.0.2.0/24       JP (registered only)    2497   Internet Initiative Japan Inc.
#   127.0.0.2/32       CN                      37963  Hangzhou Alibaba Advertising Co.,Ltd.
#   127.0.0.3/32       US                      20940  Akamai International B.V.
#   2001:db8:1::/48    CN                      45102  Alibaba (US) Technology Co., Ltd.
#   2001:db8:2::/48    US                      16509  Amazon.com, Inc.
#   ::1/128            DE                      64512  Test ASN v6
#
# 192.0.2.0/24 has no country.iso_code, only registered_country.iso_code: it tests the
# fallback. ::1 lies inside ::/96, where an IPv6 tree keeps IPv4, so 0.0.0.1 finds it too.
#
# Prints nothing on success; on failure prints why and exits non-zero.
use strict;
use warnings;

use MaxMind::DB::Writer::Tree;

@ARGV == 1 or die "usage: $0 OUTDIR\n";
my $outdir = $ARGV[0];
-d $outdir or die "$0: $outdir: not a directory\n";

my @networks = (
    [ '198.51.100.0/24', 'CN', undef, 37963, 'Hangzhou Alibaba Advertising Co.,Ltd.' ],
    [ '203.0.113.0/24',  'US', undef, 20940, 'Akamai International B.V.' ],
    [ '192.0.2.0/24',    undef, 'JP', 2497,  'Internet Initiative Japan Inc.' ],
    [ '127.0.0.2/32',    'CN', undef, 37963, 'Hangzhou Alibaba Advertising Co.,Ltd.' ],
    [ '127.0.0.3/32',    'US', undef, 20940, 'Akamai International B.V.' ],
    [ '2001:db8:1::/48', 'CN', undef, 45102, 'Alibaba (US) Technology Co., Ltd.' ],
    [ '2001:db8:2::/48', 'US', undef, 16509, 'Amazon.com, Inc.' ],
    [ '::1/128',         'DE', undef, 64512, 'Test ASN v6' ],
);

my %field_types = (
    country                        => 'map',
    registered_country             => 'map',
    iso_code                       => 'utf8_string',
    autonomous_system_number       => 'uint32',
    autonomous_system_organization => 'utf8_string',
);

sub country_fields {
    my ($net) = @_;
    my ( undef, $country, $registered ) = @{$net};
    my %fields;
    $fields{country}            = { iso_code => $country }    if defined $country;
    $fields{registered_country} = { iso_code => $registered } if defined $registered;
    $fields{registered_country} //= { iso_code => $country };
    return %fields;
}

sub asn_fields {
    my ($net) = @_;
    return (
        autonomous_system_number       => $net->[3],
        autonomous_system_organization => $net->[4],
    );
}

sub write_db {
    my ( $file, $database_type, $fields_of ) = @_;
    my $tree = MaxMind::DB::Writer::Tree->new(
        ip_version               => 6,
        record_size              => 24,
        database_type            => $database_type,
        languages                => ['en'],
        description              => { en => "tokgate test data ($database_type)" },
        map_key_type_callback    => sub { $field_types{ $_[0] } },
        merge_strategy           => 'none',
        alias_ipv6_to_ipv4       => 1,
        # The test networks are documentation and loopback ranges, which the writer drops
        # by default.
        remove_reserved_networks => 0,
    );
    $tree->insert_network( $_->[0], { $fields_of->($_) } ) for @networks;
    my $path = "$outdir/$file";
    open my $fh, '>:raw', $path or die "$0: $path: $!\n";
    $tree->write_tree($fh);
    close $fh or die "$0: $path: $!\n";
}

write_db( 'country.mmdb', 'GeoLite2-Country', \&country_fields );
write_db( 'asn.mmdb',     'GeoLite2-ASN',     \&asn_fields );
write_db( 'combined.mmdb', 'tokgate-Test-Combined',
    sub { ( country_fields( $_[0] ), asn_fields( $_[0] ) ) } );
